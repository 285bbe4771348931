"""Two processes on CPU (gloo): each trains on its own shard of the step, and both end with the same weights,
the same as one process training on the whole step."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from training_runs import losses, prepare_run, train_run, write_qa

RANK_SCRIPT = textwrap.dedent("""
    import json, os, sys
    from safetensors.torch import save_file
    from tunesmith.train import loop as train_module
    from tunesmith.cli import main

    rank, out = int(os.environ["RANK"]), sys.argv[2]
    shards, step_examples = [], train_module.step_examples

    def recording(step, num_examples, training, rank_, world):
        parts = step_examples(step, num_examples, training, rank_, world)
        shards.append(sum(parts, []))
        return parts

    train_module.step_examples = recording
    trained = []
    original = train_module.train
    train_module.train = lambda *a, **k: trained.append(original(*a, **k)) or trained[-1]
    code = main(["train", sys.argv[1]])
    model = trained[0].model
    save_file({n: p.detach().contiguous() for n, p in model.named_parameters()}, f"{out}/rank{rank}.safetensors")
    with open(f"{out}/rank{rank}.json", "w") as f:
        json.dump({"code": code, "shards": shards, "world": trained[0].summary["processes"]}, f)
""")


def test_two_processes_hold_identical_weights_after_a_step_and_each_saw_its_own_shard(tmp_path, tiny_model_dir):
    from safetensors.torch import load_file

    from tunesmith.config import load_config

    write_qa(tmp_path / "qa.jsonl")
    settings = (f"model: {{name: {tiny_model_dir}}}\ndata: {{path: qa.jsonl}}\nsplit: {{test_size: 2}}\n"
                f"training: {{method: full, max_steps: 1, batch_size: 2, gradient_accumulation_steps: 2, "
                f"precision: fp32, learning_rate: 0.001, max_grad_norm: null, num_threads: 1}}\n")
    config_file = tmp_path / "two.yaml"
    config_file.write_text(settings + f"output: {{runs_dir: {tmp_path / 'runs'}, name: two}}\n")
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launched = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                               str(script), str(config_file), str(tmp_path)],
                              capture_output=True, text=True, timeout=180, env=env)
    assert launched.returncode == 0, launched.stderr[-3000:]

    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["code"] for r in ranks] == [0, 0] and [r["world"] for r in ranks] == [2, 2]
    shard0, shard1 = ranks[0]["shards"][0], ranks[1]["shards"][0]
    assert len(shard0) == len(shard1) == 4 and not set(shard0) & set(shard1)

    weights = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in (0, 1)]
    for name in weights[0]:
        assert torch.equal(weights[0][name], weights[1][name]), name

    # one process with the whole step (batch 8) takes the same step: same loss, gradient norm and weights
    single_file = tmp_path / "one.yaml"
    single_file.write_text(settings.replace("batch_size: 2", "batch_size: 4")
                           + f"output: {{runs_dir: {tmp_path / 'runs'}, name: one}}\n")
    config = load_config(single_file)
    paths = prepare_run(config)
    single = train_run(config, paths)
    two = [json.loads(line) for line in (tmp_path / "runs" / "two" / "metrics.jsonl").read_text().splitlines()]
    one = [json.loads(line) for line in paths.metrics.read_text().splitlines()]
    assert two[0]["loss"] == pytest.approx(one[0]["loss"], abs=1e-5)
    assert two[0]["grad_norm"] == pytest.approx(one[0]["grad_norm"], rel=1e-4)
    assert two[0]["tokens_seen"] == one[0]["tokens_seen"]
    for name, param in single.model.named_parameters():
        torch.testing.assert_close(weights[0][name], param.detach(), rtol=1e-4, atol=1e-5)  # AdamW step 1 ~ sign(g)
    assert losses(paths)  # the single run logged its step


def test_nproc_relaunches_the_same_command_under_torchrun(monkeypatch, tmp_path):
    from tunesmith.cli import main

    config_file = tmp_path / "c.yaml"
    config_file.write_text("training: {max_steps: 1}\n")
    calls = []
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(subprocess, "run", lambda command: calls.append(command) or subprocess.CompletedProcess(
        command, 0))
    assert main(["train", str(config_file), "--nproc", "3", "--set", "training.seed=7", "--resume"]) == 0
    assert calls == [[sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=3",
                      "-m", "tunesmith", "train", str(config_file), "--set", "training.seed=7", "--resume"]]


# slow: two gloo processes in bf16 (~15 s); the fp32 two-process test above runs by default
@pytest.mark.slow
def test_two_processes_train_lora_in_bf16_with_the_base_stored_in_bf16(tmp_path, tiny_model_dir):
    """The frozen base is converted to bf16 in every process (bf16_weights.frozen_to_bf16) before DDP wraps the
    model; the processes must still agree on every weight, and the saved base must be back in fp32."""
    from safetensors.torch import load_file

    write_qa(tmp_path / "qa.jsonl")
    config_file = tmp_path / "lora.yaml"
    config_file.write_text(f"model: {{name: {tiny_model_dir}}}\ndata: {{path: qa.jsonl}}\nsplit: {{test_size: 2}}\n"
                           f"training: {{method: lora, max_steps: 2, batch_size: 2, precision: bf16, "
                           f"learning_rate: 0.001, num_threads: 1}}\n"
                           f"output: {{runs_dir: {tmp_path / 'runs'}, name: lora}}\n")
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    launched = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                               str(script), str(config_file), str(tmp_path)],
                              capture_output=True, text=True, timeout=180, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert launched.returncode == 0, launched.stderr[-3000:]
    weights = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in (0, 1)]
    assert any("lora_A" in name for name in weights[0])
    for name in weights[0]:
        assert torch.equal(weights[0][name], weights[1][name]), name
    assert {w.dtype for w in weights[0].values()} == {torch.float32}


@pytest.mark.slow
def test_two_processes_with_the_frozen_layer_cache_train_as_without_it(tmp_path, tiny_model_dir):
    """Under DDP each process keeps the frozen layers' output of the examples it is given; the losses match a
    two-process run that computes them every step."""
    write_qa(tmp_path / "qa.jsonl")
    runs = {}
    for on in (True, False):
        config_file = tmp_path / f"cache-{on}.yaml"
        config_file.write_text(
            f"model: {{name: {tiny_model_dir}}}\ndata: {{path: qa.jsonl}}\nsplit: {{test_size: 2}}\n"
            f"training: {{method: full, trainable_layers: 1, frozen_layer_cache: {str(on).lower()}, max_steps: 8, "
            f"batch_size: 2, precision: fp32, learning_rate: 0.01, num_threads: 1}}\n"
            f"output: {{runs_dir: {tmp_path / 'runs'}, name: cache-{on}}}\n")
        launched = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                                   "--nproc_per_node=2", "-m", "tunesmith", "train", str(config_file)],
                                  capture_output=True, text=True, timeout=180,
                                  env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert launched.returncode == 0, launched.stderr[-3000:]
        run = tmp_path / "runs" / f"cache-{on}"
        runs[on] = (json.loads((run / "train_summary.json").read_text()),
                    [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()
                     if '"loss"' in line])
    (summary_on, losses_on), (summary_off, losses_off) = runs[True], runs[False]
    assert summary_on["processes"] == 2 and summary_on["frozen_layer_cache"]["batches_skipped"] > 0
    assert "frozen_layer_cache" not in summary_off
    assert losses_on == pytest.approx(losses_off, rel=1e-4)
