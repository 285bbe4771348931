"""Turning the New run form into a config file, as a CLI user would keep one, and finding what a resume runs.

The file is `<runs_dir>/<name>.yaml` with `output.name` set, so `tunesmith train <runs_dir>/<name>.yaml` from a
terminal trains (and `--resume` continues) exactly the run the UI started.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from tunesmith.errors import DataError
from tunesmith.runs import is_run_folder
from tunesmith.ui import files
from tunesmith.ui.runs import ACTIVE, Launcher, RunBusy, run_state, write_run_config


def new_run_config(runs_dir: Path, work_dir: Path, form) -> tuple[Path, Path]:
    """(run folder, config file written) for the New run form (`tunesmith.ui.app.NewRun`).

    Raises:
        OutsideFolder: the data file is not under the working folder.
        DataError: the data file does not exist.
        RunBusy: a run of that name exists already.
        ConfigError: the settings are invalid (every problem listed).
    """
    from tunesmith.config import ModelConfig, config_from_dict, parse_override

    data = files.resolve_inside(work_dir, form.data)
    if not data.is_file():
        raise DataError("no such file in the working folder", file=form.data)
    name = form.name or f"{_slug(data.stem)}-{form.method}-{time.strftime('%Y%m%d-%H%M%S')}"
    root = files.run_folder(runs_dir, name)
    config_path = runs_dir / f"{name}.yaml"
    if root.exists() or config_path.exists():
        raise RunBusy(f"a run called {name!r} exists already: pick another name, or resume it from the Runs page")
    settings = {"data.path": os.path.relpath(data, runs_dir), "model.name": form.model or ModelConfig().name,
                "training.method": form.method}
    if form.epochs is not None:
        settings["training.epochs"] = form.epochs
    if form.max_steps is not None:
        settings["training.max_steps"] = form.max_steps
    for text in form.settings:
        if text.strip():
            keys, value = parse_override(text.strip())
            settings[".".join(keys)] = value
    settings["output.runs_dir"] = _from_work_dir(runs_dir, work_dir)
    settings["output.name"] = name
    config = _nested(settings)
    config_from_dict(config, "the New run form")  # every problem is reported before anything is written
    return root, write_run_config(config_path, config)


def resume_config(runs_dir: Path, root: Path, launcher: Launcher) -> Path:
    """The config file `tunesmith train --resume` continues a run with: the UI's `<runs_dir>/<name>.yaml`, else the
    run's own saved `config.yaml` (which names the run).

    Raises:
        RunBusy: the run is training, finished, or has no checkpoint to continue from.
    """
    state, _ = run_state(root, launcher)
    if state in ACTIVE:
        raise RunBusy(f"{root.name} is training already")
    if state == "finished":
        raise RunBusy(f"{root.name} has finished; start a new run to train more")
    if not (root / "checkpoints" / "latest").is_file():
        raise RunBusy(f"{root.name} has no checkpoint to resume from; start it again as a new run")
    own = runs_dir / f"{root.name}.yaml"
    if own.is_file():
        return own
    if is_run_folder(root):
        return root / "config.yaml"
    raise RunBusy(f"{root.name} has no config to resume with")


def _from_work_dir(path: Path, work_dir: Path) -> str:
    """A folder as the config names it for a process started in the working folder: relative when inside it."""
    try:
        return str(path.relative_to(work_dir)) or "."
    except ValueError:
        return str(path)


def _nested(settings: dict) -> dict:
    nested: dict = {}
    for key, value in settings.items():
        *sections, leaf = key.split(".")
        node = nested
        for section in sections:
            node = node.setdefault(section, {})
        node[leaf] = value
    return nested


def _slug(text: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.") or "run"
