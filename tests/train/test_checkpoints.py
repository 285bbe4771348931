"""Checkpoints: a run killed at any moment resumes exactly (weights, optimizer, data position, RNG, learning
rate), a full disk keeps the previous checkpoint, and `trainer_state.json` keeps its format."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from tunesmith.errors import TrainingError
from tunesmith.train.schedule import lr_at
from tunesmith.train.state import TrainState
from training_runs import losses, train_run

CHILD_SCRIPT = textwrap.dedent("""
    import os, pathlib, signal, sys
    from tunesmith.train import loop as train_module
    from tunesmith.config import load_config
    from tunesmith.runs import RunPaths

    kill_after = int(sys.argv[3])  # SIGKILL itself right after this step's checkpoint; 0: never
    save = train_module.save_checkpoint

    def save_then_die(paths, step, *args, **kwargs):
        folder = save(paths, step, *args, **kwargs)
        if step == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
        return folder

    train_module.save_checkpoint = save_then_die
    config = load_config(sys.argv[1])
    train_module.train(RunPaths(pathlib.Path(sys.argv[2])), config.model, config.training, config.template)
""")

RESUME_SETTINGS = ["training.method=lora", "training.learning_rate=3e-3", "training.lora_dropout=0.3",
                   "training.max_steps=6", "training.batch_size=3", "training.save_every_steps=1",
                   "training.lr_scheduler=cosine", "training.warmup_steps=2"]
"""LoRA with dropout: resuming exactly needs the adapters, AdamW moments, data position and RNG state."""


def start_child(tmp_path, paths, kill_after: int) -> subprocess.Popen:
    script = tmp_path / "child.py"
    script.write_text(CHILD_SCRIPT)
    return subprocess.Popen([sys.executable, str(script), str(paths.config), str(paths.root), str(kill_after)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def metric(paths, key: str) -> dict[int, float]:
    return {m["step"]: m[key] for m in map(json.loads, paths.metrics.read_text().splitlines()) if key in m}


def test_resume_after_sigkill_continues_the_loss_curve_exactly(make_run, tmp_path):
    config, paths = make_run(*RESUME_SETTINGS, name="straight")
    train_run(config, paths)
    expected, expected_lr = losses(paths), metric(paths, "lr")

    config, paths = make_run(*RESUME_SETTINGS, name="killed")
    child = start_child(tmp_path, paths, kill_after=3)
    _, stderr = child.communicate(timeout=120)
    assert child.returncode == -9, stderr[-2000:]
    assert (paths.checkpoints / "latest").read_text() == "step-3"
    assert not paths.model.exists()
    assert max(losses(paths)) == 3

    result = train_run(config, paths, resume=True)
    resumed = losses(paths)
    assert sorted(resumed) == [1, 2, 3, 4, 5, 6] and result.steps == 6
    for step in (4, 5, 6):
        assert resumed[step] == pytest.approx(expected[step], abs=1e-4)
    assert resumed[1] == expected[1]  # metrics before the checkpoint are kept
    # the warmup-then-cosine schedule continues at step 4 (2.56e-3), not from a restarted warmup (1.5e-3)
    assert metric(paths, "lr") == expected_lr == {s: lr_at(s - 1, 3e-3, 6, 2, "cosine") for s in range(1, 7)}


@pytest.mark.slow
def test_sigkill_at_random_moments_always_leaves_a_loadable_checkpoint_and_resume_matches(make_run, tmp_path):
    import random
    import time

    from safetensors.torch import load_file

    from tunesmith.train.checkpoints import latest_checkpoint

    config, paths = make_run(*RESUME_SETTINGS, name="straight")
    expected = train_run(config, paths).final_train_loss
    rng = random.Random(0)
    for trial in range(10):
        config, paths = make_run(*RESUME_SETTINGS, name=f"trial-{trial}")
        child = start_child(tmp_path, paths, kill_after=0)
        while child.poll() is None and not paths.metrics.is_file():
            time.sleep(0.05)
        time.sleep(rng.uniform(0, 1.5))
        child.kill()
        child.wait(timeout=60)
        checkpoint = latest_checkpoint(paths)
        if checkpoint is not None:
            assert load_file(str(checkpoint / "trainable.safetensors"))
            assert torch.load(checkpoint / "optimizer.pt", weights_only=True)["state"]
        result = train_run(config, paths, resume=checkpoint is not None)
        assert result.final_train_loss == pytest.approx(expected, abs=1e-4), f"trial {trial}, from {checkpoint}"


def test_resume_without_a_checkpoint_is_a_clear_error(make_run):
    config, paths = make_run()
    with pytest.raises(TrainingError, match="no complete checkpoint"):
        train_run(config, paths, resume=True)


def test_full_disk_gives_a_clear_error_and_keeps_the_previous_checkpoint(make_run, monkeypatch):
    import safetensors.torch
    from safetensors.torch import load_file

    real_save, calls = safetensors.torch.save_file, []

    def save_until_full(tensors, filename, *args, **kwargs):
        calls.append(filename)
        if len(calls) == 2:
            real_save(tensors, filename, *args, **kwargs)  # half a file is on disk when the space runs out
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(safetensors.torch, "save_file", save_until_full)
    config, paths = make_run("training.save_every_steps=1")
    with pytest.raises(TrainingError, match=r"No space left on device.*step-1 is intact"):
        train_run(config, paths)
    assert (paths.checkpoints / "latest").read_text() == "step-1"
    assert sorted(p.name for p in paths.checkpoints.iterdir()) == ["latest", "step-1"]  # no half-written folder
    assert load_file(str(paths.checkpoints / "step-1" / "trainable.safetensors"))
    assert json.loads((paths.checkpoints / "step-1" / "trainer_state.json").read_text())["step"] == 1


class TestTrainerState:
    SAVED = {"step": 3, "train_loss": 1.25, "tokens_seen": 900, "loss_tokens": 120, "elapsed_s": 4.5, "eval_s": 0.5,
             "best_test_loss": 1.5, "best_step": 2, "evals_without_improvement": 1, "world_size": 2,
             "rng": [{"python": "a"}, {"python": "b"}]}
    """A `trainer_state.json` as checkpoints have always written it."""

    def test_keeps_the_key_order_and_values_of_the_file(self):
        state, rng = TrainState.from_json(self.SAVED, world_size=2)
        assert rng == self.SAVED["rng"]
        assert list(state.to_json(rng)) == list(self.SAVED)
        assert state.to_json(rng) == self.SAVED

    def test_keys_an_older_file_lacks_keep_their_fresh_values(self):
        saved = {"step": 3, "train_loss": 1.25, "rng": [{}]}
        state, _ = TrainState.from_json(saved, world_size=1)
        assert state == TrainState(step=3, train_loss=1.25, world_size=1)

    def test_a_resume_with_another_number_of_processes_is_a_clear_error(self, tmp_path):
        from safetensors.torch import save_file

        from tunesmith.train.checkpoints import load_checkpoint

        (tmp_path / "trainer_state.json").write_text(json.dumps(self.SAVED))
        model = torch.nn.Linear(2, 2)
        optimizer = torch.optim.AdamW(model.parameters())
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "trainable.safetensors"))
        torch.save(optimizer.state_dict(), tmp_path / "optimizer.pt")
        with pytest.raises(TrainingError, match="saved with 2 processes; resume with the same --nproc"):
            load_checkpoint(tmp_path, model, optimizer, torch.device("cpu"), world_size=1)
