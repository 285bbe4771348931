"""The files the UI may touch: only under the runs folder and the working folder, never through `..` or a link.

Every name a browser sends is resolved here first; a path that lands outside its folder raises `OutsideFolder`
(the app answers 403), so no route reads or writes anywhere else.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from tunesmith.errors import DataError, RunError

DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
"""The data files the New run form offers (the suffixes `tunesmith.data.load` reads)."""

SKIPPED_DIRS = {".git", ".venv", "venv", "node_modules", "__pycache__", "site-packages", "checkpoints",
                "prepared", "model", "model-merged", "test-artifacts"}
"""Folders never searched for data: environments, caches, and a run's own outputs."""

MAX_LISTED = 500


class OutsideFolder(RunError):
    """A path a request named resolves outside the folders the UI serves."""


def resolve_inside(root: str | Path, relative: str) -> Path:
    """`root / relative`, fully resolved, provided it stays inside `root`.

    >>> resolve_inside("/srv/work", "data/qa.jsonl")  # doctest: +SKIP
    PosixPath('/srv/work/data/qa.jsonl')

    Raises:
        OutsideFolder: the path is absolute, has a `..` part, or resolves (through a link) outside `root`.
    """
    root = Path(root).resolve()
    parts = Path(relative).parts
    if not relative or "\0" in relative or Path(relative).is_absolute() or ".." in parts:
        raise OutsideFolder(f"{relative!r}: give a path inside {root} (no absolute paths, no '..')")
    path = (root / relative).resolve()
    if path != root and root not in path.parents:
        raise OutsideFolder(f"{relative!r}: resolves outside {root} (a symbolic link?); it is not served")
    return path


def run_folder(runs_dir: str | Path, name: str) -> Path:
    """The folder of the run called `name`, which must be a plain folder name inside the runs folder.

    Raises:
        OutsideFolder: `name` is not a plain folder name, or links outside the runs folder.
    """
    if not re.fullmatch(r"[A-Za-z0-9_.][A-Za-z0-9_.-]*", name or "") or name in {".", ".."}:
        raise OutsideFolder(f"{name!r}: a run name is a plain folder name (letters, digits, '.', '_', '-')")
    return resolve_inside(runs_dir, name)


def list_data_files(work_dir: str | Path, runs_dir: str | Path | None = None) -> list[str]:
    """Data files under the working folder (relative paths, sorted), skipping hidden folders, environments
    and the runs folder; at most `MAX_LISTED` of them."""
    root = Path(work_dir).resolve()
    runs = Path(runs_dir).resolve() if runs_dir is not None else None
    found: list[str] = []
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in SKIPPED_DIRS
                         and (here / d).resolve() != runs and not (here / d).is_symlink())
        for name in sorted(files):
            if name.lower().endswith(DATA_SUFFIXES) and not name.startswith("."):
                found.append(str((here / name).relative_to(root)))
                if len(found) >= MAX_LISTED:
                    return found
    return found


def upload_target(work_dir: str | Path, name: str) -> Path:
    """Where an uploaded file called `name` goes: `<work_dir>/uploads/<name>`, numbered when the name is taken.

    Raises:
        DataError: the name is not a plain file name with a data suffix.
    """
    base = Path(name or "").name
    if base != name or not re.fullmatch(r"[A-Za-z0-9_.-]+", base) or not base.lower().endswith(DATA_SUFFIXES):
        raise DataError(f"upload name {name!r}: use a plain file name ending in {', '.join(DATA_SUFFIXES)}",
                        file=str(name))
    folder = Path(work_dir).resolve() / "uploads"
    path, stem, suffix = folder / base, Path(base).stem, Path(base).suffix
    number = 1
    while path.exists():
        path = folder / f"{stem}-{number}{suffix}"
        number += 1
    return path
