"""Sharded training (`training.distributed: fsdp`, PyTorch FSDP2) on CPU: two gloo processes under torchrun
train as one process does on the same global batch, write sharded checkpoints (DCP), and leave the model
gathered into a plain Hugging Face folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from training_runs import prepare_run, train_run, write_qa

SHARED = ("split: {{test_size: 3}}\n"
          "training: {{method: {method}, max_steps: {steps}, batch_size: {batch}, gradient_accumulation_steps: 2, "
          "precision: fp32, learning_rate: 0.001, num_threads: 1, eval_every_steps: 2, save_every_steps: 2, "
          "distributed: {distributed}, lr_scheduler: cosine, warmup_steps: 1{extra}}}\n")
"""Two micro-batches a step (the gradients reduce-scattered after each); 3 test examples on 2 processes, so one
process evaluates one batch fewer and tops up with a blank one."""


def write_config(tmp_path, name: str, method: str = "full", batch: int = 1, steps: int = 3,
                 distributed: str = "fsdp", extra: str = "", model_dir=None):
    config_file = tmp_path / f"{name}.yaml"
    config_file.write_text(f"model: {{name: {model_dir}}}\ndata: {{path: {tmp_path / 'qa.jsonl'}}}\n"
                           + SHARED.format(method=method, steps=steps, batch=batch, distributed=distributed,
                                           extra=extra)
                           + f"output: {{runs_dir: {tmp_path / 'runs'}, name: {name}}}\n")
    return config_file


def torchrun(*args, timeout=240):
    """`tunesmith train ARGS` in two gloo processes under torchrun, as `--nproc 2` runs it."""
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "tunesmith", "train", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})


def metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def one_process(tmp_path, config_file):
    """The same run in this process, unsharded, on the same global batch (twice the per-process batch)."""
    from tunesmith.config import load_config

    config = load_config(config_file)
    return train_run(config, prepare_run(config))


def assert_same_course(sharded: list[dict], single: list[dict]) -> None:
    """Every step's loss (and every test loss) within 1e-4 relative; same tokens."""
    assert [m["step"] for m in sharded] == [m["step"] for m in single]
    for two, one in zip(sharded, single):
        for key in ("loss", "test_loss"):
            assert (key in two) == (key in one)
            if key in one:
                assert two[key] == pytest.approx(one[key], rel=1e-4), (two["step"], key)
        if "tokens_seen" in one:
            assert two["tokens_seen"] == one["tokens_seen"]


def logits_of(model, ids) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(input_ids=ids).logits


def test_two_fsdp_processes_train_as_one_and_save_a_plain_model(tmp_path, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    write_qa(tmp_path / "qa.jsonl")
    launched = torchrun(write_config(tmp_path, "fsdp", model_dir=tiny_model_dir))
    assert launched.returncode == 0, launched.stderr[-4000:]
    run_dir = tmp_path / "runs" / "fsdp"
    summary = json.loads((run_dir / "train_summary.json").read_text())
    assert summary["processes"] == 2 and summary["sharded"] is True

    single = one_process(tmp_path, write_config(tmp_path, "one", batch=2, distributed="ddp",
                                                model_dir=tiny_model_dir))
    assert_same_course(metrics(run_dir), metrics(tmp_path / "runs" / "one"))

    # the checkpoint is sharded: DCP's files, one per process, beside the usual trainer state
    checkpoint = run_dir / "checkpoints" / "step-2"
    assert (checkpoint / "sharded" / ".metadata").is_file() and len(list((checkpoint / "sharded").glob("*.distcp"))) == 2
    assert not (checkpoint / "trainable.safetensors").exists()
    assert len(json.loads((checkpoint / "trainer_state.json").read_text())["rng"]) == 2

    # the final model is gathered into a plain folder that from_pretrained loads: the single run's logits
    saved = AutoModelForCausalLM.from_pretrained(run_dir / "model")
    ids = torch.tensor([[1, 520, 3000, 45, 9, 2]])
    torch.testing.assert_close(logits_of(saved, ids), logits_of(single.model, ids), rtol=1e-3, atol=1e-4)


KILLED_CHILD = """
import os, signal, sys
from tunesmith.train import loop

step_once = loop.train_step

def step_then_kill(run, learner, step, state, clock):
    # mid-way, one step after the step-4 checkpoint: every process SIGKILLed (torchrun gives each its own
    # process group, so each one kills itself)
    if step == 5:
        os.kill(os.getpid(), signal.SIGKILL)
    return step_once(run, learner, step, state, clock)

loop.train_step = step_then_kill
from tunesmith.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_lora_under_fsdp_killed_and_resumed_trains_as_one_process(tmp_path, tiny_model_dir):
    """LoRA (merged at the end) with activation checkpointing, layers kept gathered until the backward: SIGKILL
    of both processes after the step-4 checkpoint, then --resume: every step's loss, the adapter and the merged
    model as one uninterrupted process gives them. A resume on one process is refused, saying why."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tunesmith.config import load_config
    from tunesmith.errors import TrainingError

    write_qa(tmp_path / "qa.jsonl")
    extra = ", merge_lora: true, gradient_checkpointing: true, fsdp_reshard_after_forward: false"
    config_file = write_config(tmp_path, "lora", method="lora", steps=8, extra=extra, model_dir=tiny_model_dir)
    child = tmp_path / "child.py"
    child.write_text(KILLED_CHILD)
    run_dir = tmp_path / "runs" / "lora"
    killed = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             str(child), "train", str(config_file)], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert killed.returncode != 0 and "exitcode: -9" in killed.stderr, killed.stderr[-3000:]
    assert (run_dir / "checkpoints" / "latest").read_text() == "step-4" and not (run_dir / "model").exists()
    assert json.loads((run_dir / "status.json").read_text())["state"] == "running"  # no one wrote an ending

    with pytest.raises(TrainingError, match="processes: checkpoint 2, now 1"):
        config = load_config(config_file)
        train_run(config, prepare_run(config), resume=True)

    resumed = torchrun(config_file, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    single = one_process(tmp_path, write_config(tmp_path, "one", method="lora", batch=2, steps=8, extra=extra,
                                                distributed="ddp", model_dir=tiny_model_dir))
    assert_same_course(metrics(run_dir), metrics(tmp_path / "runs" / "one"))

    ids = torch.tensor([[1, 520, 3000, 45, 9, 2]])
    expected = logits_of(single.model, ids)  # the single run's model in memory is the merged one
    adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), run_dir / "model")
    torch.testing.assert_close(logits_of(adapter, ids), expected, rtol=1e-3, atol=1e-4)
    merged = AutoModelForCausalLM.from_pretrained(run_dir / "model-merged")
    torch.testing.assert_close(logits_of(merged, ids), expected, rtol=1e-3, atol=1e-4)
    assert not torch.allclose(expected, logits_of(AutoModelForCausalLM.from_pretrained(tiny_model_dir), ids))
