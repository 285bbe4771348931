"""Several machines: `tunesmith train --nnodes N --node-rank R --master-addr HOST` relaunches under torchrun with a
static rendezvous; two such launches on loopback train exactly as one machine with two processes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from tunesmith.cli.train import launch_options
from tunesmith.errors import ConfigError
from training_runs import write_qa


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TestLaunchOptions:
    def test_one_machine_is_standalone(self):
        assert launch_options(4, 1, None, None, None) == ["--standalone", "--nproc_per_node=4"]

    def test_several_machines_rendezvous_at_the_master(self):
        assert launch_options(8, 4, 3, " node01 ", None) == [
            "--nnodes=4", "--node_rank=3", "--master_addr=node01", "--master_port=29500", "--nproc_per_node=8"]

    @pytest.mark.parametrize("args, flag", [
        ((0, 1, None, None, None), "--nproc 0: must be >= 1"),
        ((1, 0, None, None, None), "--nnodes 0: must be >= 1"),
        ((1, 2, 2, "h", None), "--node-rank 2: must be 0 to 1"),
        ((1, 2, -1, "h", None), "--node-rank -1"),
        ((1, 2, None, "h", None), "needs --node-rank"),
        ((1, 2, 0, None, None), "needs --master-addr"),
        ((1, 2, 0, "h", 70000), "--master-port 70000: must be a TCP port"),
        ((1, 1, 0, None, None), "--node-rank: only with --nnodes > 1"),
        ((2, 1, None, "h", 29501), "--master-addr, --master-port: only with --nnodes > 1"),
    ])
    def test_bad_values_name_the_flag(self, args, flag):
        with pytest.raises(ConfigError, match=flag.replace("-", r"\-").replace("+", r"\+")):
            launch_options(*args)

    def test_every_problem_is_reported_at_once(self):
        with pytest.raises(ConfigError) as error:
            launch_options(0, 2, None, None, 0)
        assert all(part in str(error.value) for part in ("--nproc 0", "--master-port 0", "--node-rank",
                                                         "--master-addr"))


def test_the_cli_relaunches_a_node_under_torchrun(monkeypatch, tmp_path):
    from tunesmith.cli import main

    config_file = tmp_path / "c.yaml"
    config_file.write_text("training: {max_steps: 1}\n")
    calls = []
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(subprocess, "run", lambda command: calls.append(command) or subprocess.CompletedProcess(
        command, 0))
    assert main(["train", str(config_file), "--nnodes", "2", "--node-rank", "1", "--master-addr", "10.1.2.3",
                 "--master-port", "29511", "--resume"]) == 0
    assert calls == [[sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--node_rank=1",
                      "--master_addr=10.1.2.3", "--master_port=29511", "--nproc_per_node=1",
                      "-m", "tunesmith", "train", str(config_file), "--resume"]]


def test_a_bad_flag_is_one_error_line_not_a_launch(monkeypatch, tmp_path, capsys):
    from tunesmith.cli import main

    config_file = tmp_path / "c.yaml"
    config_file.write_text("training: {max_steps: 1}\n")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(subprocess, "run", lambda command: pytest.fail("launched despite a bad flag"))
    assert main(["train", str(config_file), "--nnodes", "2", "--master-addr", "h"]) == 1
    assert "--nnodes 2 needs --node-rank" in capsys.readouterr().err


def run_lines(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("method, distributed", [("full", "ddp"), ("lora", "ddp"), ("full", "fsdp")])
def test_two_nodes_of_one_process_train_as_one_node_of_two(tmp_path, tiny_model_dir, method, distributed):
    """Two torchrun launches rendezvous on 127.0.0.1 as two machines would: the same processes (global ranks 0
    and 1, world size 2), so the same shards, losses, gradient norms and test losses as `--nproc 2`."""
    write_qa(tmp_path / "qa.jsonl")
    settings = (f"model: {{name: {tiny_model_dir}}}\ndata: {{path: qa.jsonl}}\nsplit: {{test_size: 2}}\n"
                f"training: {{method: {method}, max_steps: 3, batch_size: 2, gradient_accumulation_steps: 2, "
                f"precision: fp32, learning_rate: 0.001, num_threads: 1, eval_every_steps: 2, "
                f"distributed: {distributed}}}\n")
    configs = {}
    for name in ("nodes", "procs"):
        configs[name] = tmp_path / f"{name}.yaml"
        configs[name].write_text(settings + f"output: {{runs_dir: {tmp_path / 'runs'}, name: {name}}}\n")
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    tunesmith = [sys.executable, "-m", "tunesmith", "train"]

    port = free_port()
    nodes = [subprocess.Popen([*tunesmith, str(configs["nodes"]), "--nnodes", "2", "--node-rank", str(rank),
                               "--master-addr", "127.0.0.1", "--master-port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
             for rank in (0, 1)]
    outputs = [node.communicate(timeout=300)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    procs = subprocess.run([*tunesmith, str(configs["procs"]), "--nproc", "2"], capture_output=True, text=True,
                           env=env, timeout=300)
    assert procs.returncode == 0, procs.stderr[-3000:]

    two_nodes, two_procs = run_lines(tmp_path / "runs" / "nodes"), run_lines(tmp_path / "runs" / "procs")
    assert [line["step"] for line in two_nodes] == [line["step"] for line in two_procs]
    for a, b in zip(two_nodes, two_procs):
        for key in ("loss", "grad_norm", "test_loss", "tokens_seen", "loss_tokens"):
            assert (key in a) == (key in b)
            if key in a:
                assert a[key] == pytest.approx(b[key], rel=1e-6), (a["step"], key)
    summary = json.loads((tmp_path / "runs" / "nodes" / "train_summary.json").read_text())
    assert summary["processes"] == 2  # the world size (what resume fingerprints compare) counts every node
