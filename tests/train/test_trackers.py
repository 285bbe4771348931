"""Trackers (`output.report_to`): each backend, read back with its own reader, holds what metrics.jsonl holds;
with the default `report_to: []` none of them is imported."""

from __future__ import annotations

import importlib.util
import json
import sys
from typing import get_args

import pytest

from tunesmith.config import OutputConfig, load_config
from tunesmith.errors import ConfigError
from tunesmith.train import trackers
from tunesmith.train.trackers import TRACKERS, Trackers, check_installed, flatten_config, numeric_fields
from training_runs import write_qa


def tracker_modules() -> list[str]:
    return [m for m in sys.modules if m.split(".")[0] in ("tensorboard", "mlflow", "trackio")
            or m.startswith("torch.utils.tensorboard")]


def requires(module: str):
    return pytest.mark.skipif(importlib.util.find_spec(module) is None,
                              reason=f"{module} is not installed: pip install 'tunesmith[{module}]'")


@pytest.fixture
def tracked(tmp_path, tiny_model_dir):
    """Train the tiny model through the API (4 steps, a test loss at step 2 and at the end) with the given
    overrides; returns (config, run folder, metrics lines)."""
    from tunesmith.api import train_config

    data = write_qa(tmp_path / "qa.jsonl")

    def run(*overrides: str, resume: bool = False):
        config = load_config(None, [f"data.path={data}", f"model.name={tiny_model_dir}",
                                    f"output.runs_dir={tmp_path / 'runs'}", "output.name=run", "split.test_size=2",
                                    "training.precision=fp32", "training.max_steps=4", "training.warmup_steps=0",
                                    "training.eval_every_steps=2", *overrides])
        prepared, _ = train_config(config, resume=resume)
        lines = [json.loads(line) for line in prepared.paths.metrics.read_text().splitlines()]
        return config, prepared.paths.root, lines

    return run


def expected_series(lines: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """metrics.jsonl as trackers should hold it: per numeric field, its (step, value) pairs in order."""
    series: dict[str, list[tuple[int, float]]] = {}
    for line in lines:
        for key, value in numeric_fields(line).items():
            series.setdefault(key, []).append((line["step"], value))
    return series


class TestFlattenConfig:
    def test_nested_keys_join_with_dots_and_values_stay_scalars(self):
        flat = flatten_config({"training": {"lora_r": 16, "packing": True, "learning_rate": None,
                                            "lora_target_modules": ["q_proj", "v_proj"]}, "model": {"name": "m"}})
        assert flat == {"training.lora_r": 16, "training.packing": True, "training.learning_rate": "null",
                        "training.lora_target_modules": '["q_proj", "v_proj"]', "model.name": "m"}


class TestNumericFields:
    @pytest.mark.parametrize(("record", "expected"), [
        ({"step": 3, "loss": 1.25, "lr": 2e-4}, {"loss": 1.25, "lr": 2e-4}),
        ({"step": 3, "tokens_seen": 96}, {"tokens_seen": 96.0}),
        ({"step": 3, "packing": True, "method": "lora", "best_step": None}, {}),
        ({"step": 3, "loss": float("nan"), "grad_norm": float("inf")}, {}),
    ])
    def test_keeps_finite_numbers_but_the_step(self, record, expected):
        assert numeric_fields(record) == expected


class TestRegistry:
    def test_config_names_are_the_registry(self):
        (literal,) = get_args(OutputConfig.model_fields["report_to"].annotation)
        assert set(get_args(literal)) == set(TRACKERS)

    def test_unknown_tracker_lists_the_valid_ones(self):
        with pytest.raises(ConfigError, match="tensorboard.*mlflow.*trackio"):
            load_config(None, ["output.report_to=[wandb]"])

    def test_comma_separated_override(self):
        assert load_config(None, ["output.report_to=tensorboard,mlflow"]).output.report_to == ["tensorboard",
                                                                                                "mlflow"]


class TestCheckInstalled:
    def test_missing_package_names_the_pip_line(self, monkeypatch):
        monkeypatch.setattr(trackers.importlib.util, "find_spec", lambda name: None)
        with pytest.raises(ConfigError, match=r"mlflow is not installed; pip install 'tunesmith\[mlflow\]'"):
            check_installed(["mlflow"])

    def test_missing_package_fails_before_the_run_is_prepared(self, monkeypatch, tmp_path, tracked):
        monkeypatch.setattr(trackers.importlib.util, "find_spec", lambda name: None)
        with pytest.raises(ConfigError, match=r"tunesmith\[tensorboard\]"):
            tracked("output.report_to=[tensorboard]")
        assert not (tmp_path / "runs").exists()


class FakeTracker:
    def __init__(self, fail: bool = False):
        self.fail, self.lines, self.summary, self.status = fail, [], None, None

    def log_config(self, params):
        pass

    def log_metrics(self, step, values):
        if self.fail:
            raise ConnectionError("server gone")
        self.lines.append((step, values))

    def log_summary(self, values):
        self.summary = values

    def close(self, status="finished"):
        self.status = status


class TestTrackers:
    def test_a_failing_tracker_stops_with_a_warning_and_the_others_go_on(self):
        good, bad = FakeTracker(), FakeTracker(fail=True)
        group = Trackers({"good": good, "bad": bad})
        with pytest.warns(UserWarning, match="bad stopped logging: server gone"):
            group.log_line({"step": 1, "loss": 2.0})
        group.log_line({"step": 2, "loss": 1.5, "epoch": 0.5})
        group.log_summary({"steps": 2, "method": "lora", "final_test_loss": 1.4, "stopped_early": False})
        group.close("finished")
        assert good.lines == [(1, {"loss": 2.0}), (2, {"loss": 1.5, "epoch": 0.5})]
        assert good.summary == {"steps": 2.0, "final_test_loss": 1.4}
        assert good.status == "finished" and set(group.failed) == {"bad"}


def test_default_imports_no_tracker(monkeypatch, tracked):
    for name in tracker_modules():
        monkeypatch.delitem(sys.modules, name)  # imported by an earlier test: put back afterwards
    config, _, lines = tracked()
    assert config.output.report_to == [] and lines
    assert tracker_modules() == []


@requires("tensorboard")
def test_tensorboard_holds_the_metrics_config_and_summary(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, run, lines = tracked("output.report_to=[tensorboard]")
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    expected = expected_series(lines)
    assert "test_loss" in expected and len(expected["loss"]) == 4
    scalars = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    assert {tag for tag in scalars if not tag.startswith("summary/")} == set(expected)
    for key, points in expected.items():
        assert [step for step, _ in scalars[key]] == [step for step, _ in points]
        assert [value for _, value in scalars[key]] == pytest.approx([value for _, value in points], rel=1e-6)
    summary = json.loads((run / "train_summary.json").read_text())
    assert scalars["summary/final_test_loss"][0][1] == pytest.approx(summary["final_test_loss"], rel=1e-6)
    assert scalars["summary/tokens_per_s"][0][1] == pytest.approx(summary["tokens_per_s"], rel=1e-6)
    assert "config/text_summary" in events.Tags()["tensors"]


@requires("mlflow")
def test_mlflow_holds_the_metrics_params_and_summary(monkeypatch, tmp_path, tracked, tiny_model_dir):
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)  # the tracker sets it; this puts it back
    _, run, lines = tracked("output.report_to=[mlflow]")
    client = MlflowClient(tracking_uri=(tmp_path / "runs" / "mlruns").as_uri())
    experiment = client.get_experiment_by_name("tunesmith")
    (found,) = client.search_runs([experiment.experiment_id])
    assert found.info.run_name == "run" and found.info.status == "FINISHED"
    for key, points in expected_series(lines).items():
        assert [(m.step, m.value) for m in client.get_metric_history(found.info.run_id, key)] == points
    params = found.data.params
    assert params["training.max_steps"] == "4" and params["model.name"] == str(tiny_model_dir)
    assert params["output.report_to"] == '["mlflow"]'
    summary = json.loads((run / "train_summary.json").read_text())
    assert found.data.metrics["summary.final_test_loss"] == summary["final_test_loss"]
    assert found.data.metrics["summary.steps"] == 4


@requires("mlflow")
def test_mlflow_resume_continues_the_same_run(monkeypatch, tmp_path, tracked):
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    tracked("output.report_to=[mlflow]", "training.save_every_steps=2")
    _, _, lines = tracked("output.report_to=[mlflow]", "training.save_every_steps=2", "training.max_steps=6",
                          resume=True)
    client = MlflowClient(tracking_uri=(tmp_path / "runs" / "mlruns").as_uri())
    (found,) = client.search_runs([client.get_experiment_by_name("tunesmith").experiment_id])
    history = client.get_metric_history(found.info.run_id, "loss")
    assert sorted({m.step for m in history}) == [1, 2, 3, 4, 5, 6]
    assert found.data.params["training.max_steps"] == "4"  # MLflow params are written once


@requires("trackio")
def test_trackio_holds_the_metrics_and_config(monkeypatch, tmp_path, tracked):
    monkeypatch.setenv("TRACKIO_DIR", str(tmp_path / "trackio"))
    for name in [m for m in sys.modules if m.split(".")[0] == "trackio"]:
        monkeypatch.delitem(sys.modules, name)  # trackio reads TRACKIO_DIR when it is imported
    _, _, lines = tracked("output.report_to=[trackio]")
    from trackio.sqlite_storage import SQLiteStorage

    logs = SQLiteStorage.get_logs("tunesmith", "run")
    for key, points in expected_series(lines).items():
        assert [(log["step"], log[key]) for log in logs if key in log] == points
    assert SQLiteStorage.get_run_config("tunesmith", "run")["training.max_steps"] == 4


# slow: two gloo processes (~15 s)
@pytest.mark.slow
@requires("mlflow")
def test_only_the_main_process_logs(monkeypatch, tmp_path, tiny_model_dir):
    import os
    import subprocess

    from mlflow.tracking import MlflowClient

    write_qa(tmp_path / "qa.jsonl")
    config_file = tmp_path / "two.yaml"
    config_file.write_text(
        f"model: {{name: {tiny_model_dir}}}\ndata: {{path: {tmp_path / 'qa.jsonl'}}}\nsplit: {{test_size: 2}}\n"
        f"training: {{max_steps: 2, batch_size: 2, precision: fp32, num_threads: 1}}\n"
        f"output: {{runs_dir: {tmp_path / 'runs'}, name: two, report_to: [mlflow]}}\n")
    script = tmp_path / "train.py"
    script.write_text("import sys\nfrom tunesmith.cli import main\nsys.exit(main(['train', sys.argv[1]]))\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launched = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                               str(script), str(config_file)], capture_output=True, text=True, timeout=180, env=env)
    assert launched.returncode == 0, launched.stderr[-3000:]
    lines = [json.loads(line) for line in (tmp_path / "runs" / "two" / "metrics.jsonl").read_text().splitlines()]
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # what the tracker did in the processes
    client = MlflowClient(tracking_uri=(tmp_path / "runs" / "mlruns").as_uri())
    (found,) = client.search_runs([client.get_experiment_by_name("tunesmith").experiment_id])
    assert found.info.status == "FINISHED" and found.data.params["training.num_threads"] == "1"
    for key, points in expected_series(lines).items():
        assert [(m.step, m.value) for m in client.get_metric_history(found.info.run_id, key)] == points
