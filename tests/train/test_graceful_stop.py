"""A stop on request: SIGTERM or SIGINT finishes the step, writes a checkpoint (even with save_every_steps unset)
and ends cleanly; `--resume` then finishes with the loss of an uninterrupted run. And `<run>/status.json`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import yaml

from tunesmith.errors import TrainingError
from tunesmith.train import loop as train_module
from training_runs import losses, train_run, write_qa

STOP_SETTINGS = ["training.method=lora", "training.learning_rate=3e-3", "training.lora_dropout=0.3",
                 "training.max_steps=6", "training.batch_size=3", "training.lr_scheduler=cosine",
                 "training.warmup_steps=2"]
"""LoRA with dropout, no save_every_steps: the stop's own checkpoint must carry adapters, moments, data and RNG."""


def status(paths) -> dict:
    return json.loads((paths.root / "status.json").read_text())


def signal_at_step(monkeypatch, number: int, signum=signal.SIGTERM):
    """Make training send itself `signum` during optimizer step `number` (1-based), as a user would."""
    step_once = train_module.train_step

    def step_and_signal(run, learner, step, state, clock):
        result = step_once(run, learner, step, state, clock)
        if step + 1 == number:
            os.kill(os.getpid(), signum)
        return result

    monkeypatch.setattr(train_module, "train_step", step_and_signal)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_after_the_step_with_a_checkpoint_and_resume_matches(make_run, monkeypatch, signum):
    config, paths = make_run(*STOP_SETTINGS, name="straight")
    expected = train_run(config, paths)
    assert status(paths)["state"] == "finished"

    config, paths = make_run(*STOP_SETTINGS, name="stopped")
    signal_at_step(monkeypatch, 3, signum)
    stopped = train_run(config, paths)
    assert stopped.stopped and stopped.steps == 3
    assert (paths.checkpoints / "latest").read_text() == "step-3"
    assert not paths.model.exists()
    assert {k: status(paths)[k] for k in ("state", "step", "total_steps", "pid")} == \
        {"state": "stopped", "step": 3, "total_steps": 6, "pid": os.getpid()}
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handlers are put back

    monkeypatch.undo()
    resumed = train_run(config, paths, resume=True)
    assert not resumed.stopped and resumed.steps == 6
    assert resumed.final_train_loss == pytest.approx(expected.final_train_loss, rel=1e-4)
    assert sorted(losses(paths)) == [1, 2, 3, 4, 5, 6]
    assert status(paths)["state"] == "finished" and status(paths)["start_step"] == 3


def test_a_failing_run_records_its_error(make_run, monkeypatch):
    config, paths = make_run(name="failing")

    def fail(run, learner, step, state, clock):
        raise TrainingError("loss became nan at step 1")

    monkeypatch.setattr(train_module, "train_step", fail)
    with pytest.raises(TrainingError):
        train_run(config, paths)
    assert status(paths)["state"] == "failed" and "loss became nan" in status(paths)["error"]


SLOW_CHILD = textwrap.dedent("""
    import sys, time
    from tunesmith.train import loop

    step_once = loop.train_step

    def slow_step(*args):  # the tiny model trains in milliseconds: leave time to signal it mid-run
        time.sleep(0.2)
        return step_once(*args)

    loop.train_step = slow_step
    from tunesmith.cli import main
    sys.exit(main(sys.argv[1:]))
""")


# slow: a real `tunesmith train` process (~20 s); the in-process signal test above covers the same path
@pytest.mark.slow
def test_sigterm_to_tunesmith_train_stops_it_cleanly_and_resume_finishes_it(tmp_path, tiny_model_dir):
    from tunesmith import api
    from tunesmith.runs import RunPaths

    data = write_qa(tmp_path / "qa.jsonl")
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "data": {"path": str(data)}, "model": {"name": str(tiny_model_dir)}, "split": {"test_size": 2},
        "training": {"precision": "fp32", "max_steps": 20, "batch_size": 2, "lora_dropout": 0.1,
                     "learning_rate": 1e-3},
        "output": {"runs_dir": str(tmp_path / "runs"), "name": "signalled"}}))
    expected = api.train_run(str(config), ["output.name=straight"]).final_train_loss
    paths = RunPaths(tmp_path / "runs" / "signalled")
    script = tmp_path / "child.py"
    script.write_text(SLOW_CHILD)
    child = subprocess.Popen([sys.executable, str(script), "train", str(config)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not ((paths.root / "status.json").is_file() and status(paths)["step"] >= 2):
        assert child.poll() is None and time.time() < deadline, child.communicate()
        time.sleep(0.05)
    assert status(paths)["state"] == "running" and status(paths)["pid"] == child.pid
    assert status(paths)["total_steps"] == 20
    child.send_signal(signal.SIGTERM)
    out, err = child.communicate(timeout=120)
    assert child.returncode == 0, err[-3000:]
    assert "stopped at step" in out and f"tunesmith train {config} --resume" in out
    stopped_at = status(paths)["step"]
    assert status(paths)["state"] == "stopped" and 2 <= stopped_at < 20
    assert (paths.checkpoints / "latest").read_text() == f"step-{stopped_at}"

    resumed = subprocess.run([sys.executable, "-m", "tunesmith", "train", str(config), "--resume"],
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert status(paths)["state"] == "finished" and status(paths)["step"] == 20
    final = [m["loss"] for m in map(json.loads, paths.metrics.read_text().splitlines()) if "loss" in m][-1]
    assert final == pytest.approx(expected, rel=1e-4)
