"""Run folders, the tunesmith home, atomic writes and file hashes.

Every run lives in `<runs_dir>/<name>/` with a fixed layout (see `RunPaths`); every file tunesmith writes
goes through `atomic_write_*` or `atomic_dir` so a crash or a full disk never leaves a half-written file
where a complete one is expected.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from tunesmith.config import Config, config_hash, config_to_yaml, load_config
from tunesmith.errors import RunError


def tunesmith_home() -> Path:
    """Cache folder for converted models and other shared files: $TUNESMITH_HOME or ~/.cache/tunesmith."""
    return Path(os.environ.get("TUNESMITH_HOME") or Path.home() / ".cache" / "tunesmith")


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write a file so readers see either the old content or the new, never a torn one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, data) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Build a folder under a temporary name and rename it into place only when complete.

    An existing folder at `path` is replaced only after the new one is whole.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}-{time.monotonic_ns()}")
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def file_sha256(path: str | Path) -> str:
    """Content hash of a file or of every file in a folder (sorted by relative path)."""
    path = Path(path)
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        if file != path:
            digest.update(str(file.relative_to(path)).encode())
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class RunPaths:
    """The fixed layout of one run folder."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def prepared(self) -> Path:
        return self.root / "prepared"

    @property
    def manifest(self) -> Path:
        return self.prepared / "manifest.json"

    @property
    def data_stats(self) -> Path:
        return self.root / "data_stats.json"

    @property
    def rejected(self) -> Path:
        """The invalid records preparation skipped, one JSON line each: where, reason and the raw record."""
        return self.root / "rejected.jsonl"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def loss_plot(self) -> Path:
        return self.root / "loss.png"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def model(self) -> Path:
        return self.root / "model"

    @property
    def merged_model(self) -> Path:
        return self.root / "model-merged"

    @property
    def train_summary(self) -> Path:
        return self.root / "train_summary.json"

    @property
    def eval_dir(self) -> Path:
        return self.root / "eval"

    @property
    def report(self) -> Path:
        return self.root / "report.html"


def default_run_name(config: Config) -> str:
    """`<data stem>-<method>-<hash of the config>`: the same config always names the same run folder, so
    `data prepare` then `train` share it, and any change of setting starts a new one."""
    stem = Path(config.data.path).stem if config.data.path else "run"
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", stem).strip("-") or "run"
    settings = config.model_dump(mode="json", exclude={"output"})
    return f"{stem}-{config.training.method}-{config_hash(settings)[:8]}"


def safe_run_name(name: str) -> str:
    """A run name is a single folder name: no separators, no `..`, nothing that escapes runs_dir.

    Raises:
        RunError: the name would leave the runs folder.
    """
    if not name or name in {".", ".."} or "/" in name or "\\" in name or "\0" in name:
        raise RunError(f"output.name={name!r}: a run name must be a plain folder name (no '/', '..')")
    return name


def run_paths(config: Config) -> RunPaths:
    """Where the run of this config lives (output.runs_dir / output.name)."""
    name = safe_run_name(config.output.name or default_run_name(config))
    return RunPaths(Path(config.output.runs_dir) / name)


def create_run(config: Config) -> RunPaths:
    """Create (or reuse) the run folder and save the resolved config in it, with a fixed name."""
    if not config.output.name:
        config = config.model_copy(update={"output": config.output.model_copy(
            update={"name": default_run_name(config)})})
    paths = run_paths(config)
    paths.root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(paths.config, config_to_yaml(config))
    return paths


RUN_INFO_FILE = "tunesmith.json"
"""Written beside every trained or exported model: base model, method, the template as training rendered it."""


def is_run_folder(path: str | Path) -> bool:
    """A run folder holds the `config.yaml` its run was made from (and is not itself a model folder).

    The one test of "is this a run?" for `eval`, `generate`, `runs list` and the rest.
    """
    path = Path(path)
    return (path / "config.yaml").is_file() and not (path / "config.json").is_file()


def read_run_info(model_dir: Path) -> dict | None:
    """The `tunesmith.json` next to a trained or exported model, or None for a plain model folder.

    Its `stripped_template` names the baked-in form removed from the training prompts (null or absent: none).

    Raises:
        RunError: the file is not JSON, lacks `base_model`, or its `stripped_template` is neither a name nor null.
    """
    path = model_dir / RUN_INFO_FILE
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunError(f"{path}: not valid JSON ({e}); it is written by `tunesmith train`") from None
    if not isinstance(info, dict) or "base_model" not in info:
        raise RunError(f"{path}: missing 'base_model'; it is written by `tunesmith train`")
    stripped = info.get("stripped_template")
    if stripped is not None and not isinstance(stripped, str):
        raise RunError(f"{path}: 'stripped_template' must be a form name or null, not {stripped!r}; it is written "
                       f"by `tunesmith train`")
    return info


def locate_model(run_or_model: str) -> tuple[Path | None, dict | None]:
    """Where the weights are and what `tunesmith.json` says about them.

    `runs/x` (a run folder) -> (`runs/x/model`, info); `runs/x/model` or an exported folder -> (itself, info);
    anything else (alias, plain folder, hub name) -> (None, None).

    Raises:
        RunError: a run folder without a trained model.
    """
    path = Path(run_or_model).expanduser()
    if not path.is_dir():
        return None, None
    if is_run_folder(path):
        model_dir = path / "model"
        info = read_run_info(model_dir)
        if info is None:
            raise RunError(f"{path}: this run has no trained model yet ({model_dir / RUN_INFO_FILE} is missing); "
                           f"run `tunesmith train` first")
        return model_dir, info
    info = read_run_info(path)
    return (path, info) if info is not None else (None, None)


def open_run(path: str | Path) -> tuple[RunPaths, Config]:
    """Open an existing run folder and its saved config.

    Raises:
        RunError: the folder or its config.yaml is missing.
    """
    paths = RunPaths(Path(path))
    if not is_run_folder(paths.root):
        raise RunError(f"{path}: not a run folder (no config.yaml); runs are made by `tunesmith train`")
    return paths, load_config(paths.config)


def append_jsonl(path: str | Path, record: dict) -> None:
    """Append one whole JSON line and flush it, so a crash never leaves a torn line behind."""
    line = json.dumps(record, ensure_ascii=False) + "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: str | Path) -> list[dict]:
    """Read a JSONL file written by tunesmith, ignoring a torn last line from a crash."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records
