"""Trackers: the run's metrics, config and final figures also sent to TensorBoard, MLflow or trackio
(`output.report_to`), because teams already watch one of them; `metrics.jsonl` stays the run's own record.

Each backend is an optional extra, imported only when it is asked for, so a run with `report_to: []` imports
none of them. They receive exactly what `metrics.jsonl` holds: each line's numeric fields at its `step`. Only
the main process logs (the loop calls its callbacks there alone, and the API opens trackers there alone).

A tracker that fails while training runs (an MLflow server gone) stops logging with a warning instead of
ending hours of training: `metrics.jsonl` still has everything.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import math
import os
import time
import warnings
from typing import Protocol

from tunesmith.config import OutputConfig
from tunesmith.errors import ConfigError, TrainingError
from tunesmith.runs import RunPaths

__all__ = ["TRACKERS", "Tracker", "Trackers", "check_installed", "flatten_config", "numeric_fields"]

Param = str | int | float | bool


class Tracker(Protocol):
    """One backend; `Trackers` calls log_config once, log_metrics per metrics line, log_summary at the end."""

    def log_config(self, params: dict[str, Param]) -> None: ...

    def log_metrics(self, step: int, values: dict[str, float]) -> None: ...

    def log_summary(self, values: dict[str, float]) -> None: ...

    def close(self, status: str = "finished") -> None: ...


# ----------------------------------------------------------------------------------------------------------------
# what is logged


def flatten_config(config: dict, prefix: str = "") -> dict[str, Param]:
    """Nested config sections as dotted keys, every value a scalar the trackers take (lists and empty values as
    JSON text, so they read as they were written).

    >>> flatten_config({"training": {"lora_r": 16, "max_steps": None}, "output": {"report_to": ["mlflow"]}})
    {'training.lora_r': 16, 'training.max_steps': 'null', 'output.report_to': '["mlflow"]'}
    """
    flat: dict[str, Param] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_config(value, f"{name}."))
        elif isinstance(value, str | int | float | bool):
            flat[name] = value
        else:
            flat[name] = json.dumps(value)
    return flat


def numeric_fields(record: dict, skip: tuple[str, ...] = ("step",)) -> dict[str, float]:
    """The finite numbers of a metrics line or summary (not its `step`, flags or text), as trackers plot them.

    >>> numeric_fields({"step": 4, "loss": 1.5, "tokens_seen": 96, "packing": True, "method": "lora"})
    {'loss': 1.5, 'tokens_seen': 96.0}
    """
    return {key: float(value) for key, value in record.items()
            if key not in skip and isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value)}


# ----------------------------------------------------------------------------------------------------------------
# the backends


class TensorBoardTracker:
    """Event files in `<run>/tensorboard/` (so `tensorboard --logdir runs/` shows every run side by side); the
    config as text and, at the end, as HParams next to the final figures."""

    def __init__(self, paths: RunPaths, output: OutputConfig, resume: bool):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(paths.root / "tensorboard"))
        self.params: dict[str, Param] = {}
        self.last_step = 0

    def log_config(self, params: dict[str, Param]) -> None:
        self.params = params
        table = "\n".join(f"| {key} | {value} |" for key, value in params.items())
        self.writer.add_text("config", f"| key | value |\n|---|---|\n{table}")

    def log_metrics(self, step: int, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)
        self.last_step = max(self.last_step, step)

    def log_summary(self, values: dict[str, float]) -> None:
        from torch.utils.tensorboard.summary import hparams

        tags = {f"summary/{key}": value for key, value in values.items()}
        for summary in hparams(self.params, tags):
            self.writer.file_writer.add_summary(summary)
        for tag, value in tags.items():
            self.writer.add_scalar(tag, value, self.last_step)

    def close(self, status: str = "finished") -> None:
        self.writer.close()


class MlflowTracker:
    """One MLflow run per tunesmith run, named after its folder, in the `tracking_project` experiment; resuming
    continues the same MLflow run. The client API, not mlflow's global active run, so nothing leaks to callers."""

    def __init__(self, paths: RunPaths, output: OutputConfig, resume: bool):
        from mlflow.tracking import MlflowClient

        uri = output.mlflow_tracking_uri or (paths.root.parent / "mlruns").resolve().as_uri()
        if uri.startswith("file:"):
            # MLflow 3 keeps the file store behind this opt-in; it is what needs no server and no database
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=uri)
        experiment = self.client.get_experiment_by_name(output.tracking_project)
        experiment_id = (experiment.experiment_id if experiment is not None
                         else self.client.create_experiment(output.tracking_project))
        tag = str(paths.root.resolve())
        found = self.client.search_runs([experiment_id], filter_string=f"tags.`tunesmith.run` = '{tag}'",
                                        max_results=1, order_by=["attributes.start_time DESC"]) if resume else []
        run = found[0] if found else self.client.create_run(experiment_id, run_name=paths.root.name,
                                                            tags={"tunesmith.run": tag})
        self.run_id = run.info.run_id
        self.last_step = 0

    def log_config(self, params: dict[str, Param]) -> None:
        from mlflow.entities import Param as MlflowParam

        logged = self.client.get_run(self.run_id).data.params  # a resumed run keeps its first values
        fresh = [MlflowParam(key, str(value)) for key, value in params.items() if key not in logged]
        for start in range(0, len(fresh), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=fresh[start:start + 100])

    def log_metrics(self, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(key, value, now, step) for key, value in values.items()])
        self.last_step = max(self.last_step, step)

    def log_summary(self, values: dict[str, float]) -> None:
        self.log_metrics(self.last_step, {f"summary.{key}": value for key, value in values.items()})

    def close(self, status: str = "finished") -> None:
        self.client.set_terminated(self.run_id, {"finished": "FINISHED", "stopped": "KILLED"}.get(status, "FAILED"))


class TrackioTracker:
    """A trackio run named after the run folder in the `tracking_project` project, stored where trackio keeps
    its projects (`TRACKIO_DIR`, by default under the Hugging Face cache) so `trackio show` finds it."""

    def __init__(self, paths: RunPaths, output: OutputConfig, resume: bool):
        import trackio  # noqa: F401  (fails here, before training, not at the first line)

        self.project, self.name, self.resume = output.tracking_project, paths.root.name, resume
        self.run = None
        self.last_step = 0

    def log_config(self, params: dict[str, Param]) -> None:
        import trackio

        # trackio prints where it logs; the library leaves the terminal to the CLI
        with contextlib.redirect_stdout(io.StringIO()):
            self.run = trackio.init(project=self.project, name=self.name, config=params, embed=False,
                                    resume="allow" if self.resume else "never", auto_log_cpu=False,
                                    auto_log_gpu=False)

    def log_metrics(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)
        self.last_step = max(self.last_step, step)

    def log_summary(self, values: dict[str, float]) -> None:
        self.run.log({f"summary/{key}": value for key, value in values.items()}, step=self.last_step)

    def close(self, status: str = "finished") -> None:
        import trackio

        if self.run is not None:
            # trackio.finish, not run.finish: it also forgets the run, which trackio would finish again at exit
            with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(RuntimeError):
                trackio.finish()


TRACKERS: dict[str, type] = {"tensorboard": TensorBoardTracker, "mlflow": MlflowTracker, "trackio": TrackioTracker}
"""`output.report_to` name -> backend; the extra of the same name installs its package."""

MODULES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "trackio": "trackio"}
"""The module each tracker imports, looked for before training starts."""


# ----------------------------------------------------------------------------------------------------------------
# the set a run logs to


def check_installed(names: list[str]) -> None:
    """Fail before any data is prepared or model loaded when a tracker's package is missing.

    Raises:
        ConfigError: naming each missing tracker and the `pip install` line that adds it.
    """
    problems = []
    for name in dict.fromkeys(names):
        if name not in TRACKERS:
            problems.append(f"output.report_to: unknown tracker {name!r}; choose from {', '.join(TRACKERS)}")
        elif importlib.util.find_spec(MODULES[name]) is None:
            problems.append(f"output.report_to: {name} is not installed; pip install 'tunesmith[{name}]'")
    if problems:
        raise ConfigError(problems)


class Trackers:
    """The trackers of one run, fed by the training loop's callbacks; empty (and free) without `report_to`."""

    def __init__(self, trackers: dict[str, Tracker]):
        self.trackers = trackers
        self.failed: dict[str, str] = {}

    @classmethod
    def open(cls, output: OutputConfig, paths: RunPaths, config: dict, resume: bool = False) -> Trackers:
        """Start each tracker of `output.report_to` for the run and log the resolved `config` to it.

        Raises:
            ConfigError: a tracker's package is missing.
            TrainingError: a tracker cannot start (an unreachable MLflow server, say), before training starts.
        """
        check_installed(output.report_to)
        opened: dict[str, Tracker] = {}
        params = flatten_config(config)
        for name in dict.fromkeys(output.report_to):
            try:
                opened[name] = TRACKERS[name](paths, output, resume)
                opened[name].log_config(params)
            except Exception as e:  # each backend has its own errors; one message names which tracker failed
                cls(opened).close("failed")
                raise TrainingError(f"output.report_to: {name} could not start: {e}; fix it or drop {name} "
                                    f"from output.report_to") from e
        return cls(opened)

    def log_line(self, line: dict) -> None:
        """A metrics line, as `metrics.jsonl` has it, at its step (the loop's `on_log`)."""
        values = numeric_fields(line)
        if values:
            self._each("log_metrics", int(line["step"]), values)

    def log_summary(self, summary: dict) -> None:
        """The final figures of `train_summary.json` (or of evaluation)."""
        values = numeric_fields(summary, skip=())
        if values:
            self._each("log_summary", values)

    def close(self, status: str = "finished") -> None:
        """End every tracker's run: "finished", "stopped" (on request) or "failed"."""
        for name in list(self.trackers):
            with contextlib.suppress(Exception):  # closing is best effort: the run's own files are written
                self.trackers.pop(name).close(status)

    def _each(self, method: str, *args) -> None:
        for name, tracker in list(self.trackers.items()):
            try:
                getattr(tracker, method)(*args)
            except Exception as e:  # a tracker must not end training; metrics.jsonl keeps every line
                self.failed[name] = str(e)
                self.trackers.pop(name)
                warnings.warn(f"{name} stopped logging: {e} (metrics.jsonl has every line)", stacklevel=2)
