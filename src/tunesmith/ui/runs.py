"""Runs as the UI sees them: their state, their growing metrics, and the `tunesmith train` processes it starts.

A run's state comes from `<run>/status.json`, which the trainer keeps (running, stopped, finished, failed); a
"running" one whose process is gone failed. Runs trained before status files existed are read from what they left
(a model: finished; a checkpoint: stopped). Training always runs as `python -m tunesmith train CONFIG` in a
process of its own, exactly as from a terminal, with its output in `<run>/train.log`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from tunesmith.errors import RunError
from tunesmith.runs import RUN_INFO_FILE, RunPaths, atomic_write_text, read_jsonl, safe_run_name

STATES = ("starting", "running", "stopping", "stopped", "finished", "failed", "prepared")
ACTIVE = {"starting", "running", "stopping"}
LOG_FILE = "train.log"
STATUS_FILE = "status.json"


class RunBusy(RunError):
    """The run is not in a state that allows this (already running, not running, exists already)."""


def read_status(root: Path) -> dict | None:
    """`<run>/status.json` as written by the trainer, or None when missing or unreadable."""
    try:
        status = json.loads((root / STATUS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return status if isinstance(status, dict) else None


def is_alive(pid: int | None) -> bool:
    """Whether a process with this id exists (a zombie child counts, so `Launcher.reap` runs first)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def log_tail(root: Path, lines: int = 20) -> list[str]:
    """The last lines of `<run>/train.log` (the terminal output of its training), for a failure's message."""
    path = root / LOG_FILE
    if not path.is_file():
        return []
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - 64_000))
        text = f.read().decode("utf-8", errors="replace")
    # progress bars redraw with carriage returns: keep what the terminal would show last
    shown = [line.rsplit("\r", 1)[-1] for line in text.splitlines()]
    return [line for line in shown if line.strip()][-lines:]


class Launcher:
    """The training processes this UI started, so it can stop them and reap them when they end."""

    def __init__(self):
        self.processes: dict[Path, subprocess.Popen] = {}
        self.stopping: set[Path] = set()

    def reap(self) -> None:
        for process in self.processes.values():
            process.poll()

    def running(self, root: Path) -> subprocess.Popen | None:
        process = self.processes.get(root)
        return process if process is not None and process.poll() is None else None

    def returncode(self, root: Path) -> int | None:
        process = self.processes.get(root)
        return None if process is None else process.poll()

    def start(self, root: Path, config: Path, cwd: Path, resume: bool = False) -> subprocess.Popen:
        """`python -m tunesmith train CONFIG [--resume]` in its own session, output appended to train.log.

        Raises:
            RunBusy: the run is training already.
        """
        if self.running(root) is not None or run_state(root, self)[0] in ACTIVE:
            raise RunBusy(f"{root.name} is training already; stop it first")
        command = [sys.executable, "-m", "tunesmith", "train", str(config)] + (["--resume"] if resume else [])
        root.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("TUNESMITH_DEBUG", None)
        with open(root / LOG_FILE, "a", encoding="utf-8") as log:
            log.write(f"\n$ tunesmith train {config}{' --resume' if resume else ''}   "
                      f"(started by tunesmith ui, {time.strftime('%Y-%m-%d %H:%M:%S')})\n")
            log.flush()
            # its own session: a Ctrl-C in the UI's terminal does not reach training, which outlives the UI
            process = subprocess.Popen(command, cwd=cwd, stdin=subprocess.DEVNULL, stdout=log,
                                       stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.processes[root] = process
        self.stopping.discard(root)
        return process

    def stop(self, root: Path) -> int:
        """Ask the run's training process to stop (SIGTERM: it finishes the step, checkpoints, exits); its pid.

        Raises:
            RunBusy: the run is not training.
        """
        process = self.running(root)
        status = read_status(root) or {}
        pid = process.pid if process is not None else status.get("pid")
        if process is None and not (status.get("state") == "running" and is_alive(pid)):
            raise RunBusy(f"{root.name} is not training; nothing to stop")
        os.kill(pid, signal.SIGTERM)
        if process is not None:
            self.stopping.add(root)
        return pid


def run_state(root: Path, launcher: Launcher | None = None) -> tuple[str, str | None]:
    """(state, error message or None) of a run folder; see `STATES`."""
    launcher = launcher or Launcher()
    launcher.reap()
    status = read_status(root)
    process = launcher.running(root)
    if process is not None and root in launcher.stopping:
        return "stopping", None
    last, code = launcher.processes.get(root), launcher.returncode(root)
    if last is not None and code not in (None, 0) and (status or {}).get("pid") != last.pid:
        return "failed", f"tunesmith train exited with code {code} before training started; see {LOG_FILE}"
    if status is not None and (process is None or status.get("pid") == process.pid):
        state = status.get("state")
        if state not in STATES:
            return "failed", f"{STATUS_FILE}: unknown state {state!r}"
        if state == "running" and process is None and not is_alive(status.get("pid")):
            return "failed", (f"the training process (pid {status.get('pid')}) ended without finishing "
                              f"(killed?); see {LOG_FILE}")
        return state, status.get("error")
    if process is not None:
        return "starting", None  # the new process has not written its status yet
    if (root / "model" / RUN_INFO_FILE).is_file():
        return "finished", None
    if (root / "checkpoints" / "latest").is_file():
        return "stopped", None
    if (root / LOG_FILE).is_file():
        return "failed", f"training ended without a model; see {LOG_FILE}"
    return "prepared", None


def progress(root: Path, metrics: list[dict] | None = None) -> dict:
    """Step, total steps, last loss, learning rate, tokens/s, ETA (seconds) and best test loss of a run."""
    metrics = read_jsonl(RunPaths(root).metrics) if metrics is None else metrics
    status = read_status(root) or {}
    trained = [m for m in metrics if "loss" in m]
    last = trained[-1] if trained else {}
    tests = [m["test_loss"] for m in metrics if isinstance(m.get("test_loss"), (int, float))]
    step = max((m.get("step", 0) for m in metrics), default=0)
    total = status.get("total_steps")
    eta = None
    done_here = step - status.get("start_step", 0)
    if status.get("state") == "running" and total and done_here > 0 and status.get("started"):
        elapsed = max(status.get("updated", time.time()) - status["started"], 0.0)
        eta = round(max(total - step, 0) * elapsed / done_here, 1)
    return {"step": step, "total_steps": total, "loss": last.get("loss"), "lr": last.get("lr"),
            "tokens_per_s": last.get("tokens_per_s"), "eta_s": eta, "best_test_loss": min(tests, default=None)}


def describe_run(root: Path, launcher: Launcher | None = None) -> dict:
    """What the Runs page shows of one run: state (with the log's last lines when it failed) and progress."""
    state, error = run_state(root, launcher)
    described = {"name": root.name, "state": state, "error": error, **progress(root),
                 "has_model": (root / "model" / RUN_INFO_FILE).is_file(),
                 "has_report": (root / "report.html").is_file()}
    if state == "failed":
        described["log_tail"] = log_tail(root)
    return described


@dataclass
class MetricsTail:
    """Follows a growing `metrics.jsonl`: each `read()` returns the whole lines added since the last one.

    A resume replaces the file (atomically) with the checkpoint's copy; then `read()` starts over and says so.
    """

    path: Path
    offset: int = 0
    inode: int | None = None

    def read(self) -> tuple[list[dict], bool]:
        """(new lines, whether the file was replaced so earlier lines no longer hold)."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            replaced = self.offset > 0
            self.offset, self.inode = 0, None
            return [], replaced
        replaced = self.inode is not None and (stat.st_ino != self.inode or stat.st_size < self.offset)
        if replaced:
            self.offset = 0
        self.inode = stat.st_ino
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            chunk = f.read()
        whole = chunk[: chunk.rfind(b"\n") + 1]  # a line still being written waits for the next read
        self.offset += len(whole)
        lines = []
        for raw in whole.decode("utf-8", errors="replace").splitlines():
            try:
                lines.append(json.loads(raw))
            except ValueError:
                continue
        return lines, replaced


def write_run_config(path: Path, config: dict) -> Path:
    """A YAML config file as a CLI user would keep one: only the keys chosen, by section, with `output.name`.

    >>> write_run_config(Path("runs/qa.yaml"), {"data": {"path": "qa.jsonl"}, "output": {"name": "qa"}})
    ... # doctest: +SKIP
    """
    name = safe_run_name(str((config.get("output") or {}).get("name") or ""))
    header = f"# written by `tunesmith ui` for the run {name}; the same from a terminal: tunesmith train {path}\n"
    return atomic_write_text(path, header + yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
