"""Resumable output: append-only JSONL that survives a crash, and the summary written next to it.

Generation costs money and hours, so every record is appended as one whole line and fsynced; re-running the
same command reads what is there (a torn last line from a crash is cut away), skips work already done and
appends only what is missing. Whatever ends a run (done, an error, Ctrl-C, SIGTERM), `<out>.summary.json` says
what it asked for, kept, dropped (and why) and cost. A signal never lands inside a line being written: it is
held until that line is whole.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from tunesmith.datagen.teachers import Teacher, TeacherFailure, TeacherReply
from tunesmith.errors import DataError, TeacherError
from tunesmith.runs import append_jsonl, atomic_write_json


def recover_jsonl(path: str | Path) -> list[dict]:
    """The records of an output file being resumed, after cutting away a torn last line left by a crash.

    Lines are appended whole, so only the end of the file can be damaged: a last line without its newline,
    or one that is not valid JSON, is truncated away so the next append starts clean.

    Raises:
        DataError: a line before the last is not a JSON object (not a file this generator wrote).
    """
    path = Path(path)
    if not path.is_file():
        return []
    data = path.read_bytes()
    lines = data.split(b"\n")
    complete = lines[:-1]  # the part after the last newline is empty or torn
    records: list[dict] = []
    for number, line in enumerate(complete, start=1):
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            record = None
        if not isinstance(record, dict):
            if number == len(complete):
                complete = complete[:-1]
                break
            raise DataError("not a JSON object; this file was not written by the generator, choose another --out",
                            file=str(path), line=number)
        records.append(record)
    truncate_lines(path, len(records), data)
    return records


def truncate_lines(path: Path, keep: int, data: bytes | None = None) -> None:
    """Cut a JSONL file after its first `keep` lines (no-op when that is the whole file)."""
    data = path.read_bytes() if data is None else data
    end = 0
    for _ in range(keep):
        end = data.index(b"\n", end) + 1
    if end != len(data):
        with open(path, "r+b") as f:
            f.truncate(end)
            f.flush()
            os.fsync(f.fileno())



@dataclass
class DatagenSummary:
    """What one generation run asked for, got, kept and dropped (and why), and what it cost."""

    kind: str
    out: str
    teacher: str
    requested: int
    existing: int = 0
    produced: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    requests: int = 0
    failed_requests: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    stopped: str = "done"
    last_failure: str | None = None
    notes: list[str] = field(default_factory=list)
    details: dict = field(default_factory=dict)

    def count(self, result: TeacherReply | TeacherFailure) -> None:
        """Add one request's outcome and cost: a failure keeps its reason, a reply its token usage."""
        self.requests += 1
        self.retries += result.attempts - 1
        if isinstance(result, TeacherFailure):
            self.failed_requests += 1
            self.last_failure = result.reason
        else:
            self.prompt_tokens += result.prompt_tokens
            self.completion_tokens += result.completion_tokens

    @property
    def total(self) -> int:
        return self.existing + self.kept

    def as_dict(self) -> dict:
        data = asdict(self)
        data["dropped"] = dict(sorted(self.dropped.items()))
        data["total"] = self.total
        data["total_tokens"] = self.prompt_tokens + self.completion_tokens
        data["finished_at"] = utc_now()
        return data

    def text(self) -> str:
        """The summary as a few lines for the terminal."""
        dropped = ", ".join(f"{k} {v}" for k, v in sorted(self.dropped.items()) if v) or "none"
        lines = [f"{self.kind}: {self.out} holds {self.total} records ({self.existing} before this run, "
                 f"{self.kept} new)",
                 f"  requested {self.requested}, produced {self.produced}, kept {self.kept}; dropped: {dropped}",
                 f"  requests {self.requests} ({self.failed_requests} failed, {self.retries} retries), "
                 f"tokens {self.prompt_tokens} prompt + {self.completion_tokens} completion",
                 f"  stopped: {self.stopped}"]
        if self.last_failure:
            lines.append(f"  last failure: {self.last_failure}")
        lines += [f"  note: {note}" for note in self.notes]
        lines.append(f"  summary: {summary_path(self.out)}")
        return "\n".join(lines)


def summary_path(out: str | Path) -> Path:
    """Where the summary of the run writing `out` goes: beside it, so the two travel together.

    >>> summary_path("data/gen.jsonl").as_posix()
    'data/gen.jsonl.summary.json'
    """
    out = Path(out)
    return out.with_name(out.name + ".summary.json")


def utc_now() -> str:
    """The time records and summaries are stamped with: UTC, to the second, ISO 8601."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def save_summary(summary: DatagenSummary, out: Path) -> None:
    """Write `<out>.summary.json`; `kept` is recounted from the file, exact even after a Ctrl-C mid-write."""
    if out.is_file():
        summary.kept = out.read_bytes().count(b"\n") - summary.existing
    atomic_write_json(summary_path(out), summary.as_dict())


def progress_bar(total: int, initial: int, unit: str, desc: str, enabled: bool):
    """A tqdm bar that starts at the work already done, so a resumed run shows its true progress."""
    from tqdm import tqdm

    return tqdm(total=total, initial=min(initial, total), unit=unit, desc=desc, disable=not enabled)


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped a generator; a KeyboardInterrupt, so every Ctrl-C path handles both."""

    def __init__(self, signal_name: str):
        super().__init__(signal_name)
        self.signal_name = signal_name


class _SignalGate:
    """Turns SIGINT and SIGTERM into `Interrupted`, held back while a line is being written.

    Python runs signal handlers between bytecodes, so a bare KeyboardInterrupt may land between a line's write
    and its fsync; here a signal during `writing()` is remembered and raised once the line is whole.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self._writing = False
        self._pending: str | None = None

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self._writing:
            self._pending = name
            return
        raise Interrupted(name)

    @contextlib.contextmanager
    def installed(self):
        """The handlers for the length of a run; only the main thread may set them (elsewhere: unchanged)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    @contextlib.contextmanager
    def writing(self):
        self._writing = True
        try:
            yield
        finally:
            self._writing = False
        if self._pending is not None:
            name, self._pending = self._pending, None
            raise Interrupted(name)


_GATE = _SignalGate()


def append_record(out: str | Path, record: dict) -> None:
    """Append one output line, whole: a SIGINT or SIGTERM arriving meanwhile is raised after it is fsynced."""
    with _GATE.writing():
        append_jsonl(out, record)


@contextlib.contextmanager
def recording_stop(summary: DatagenSummary, out: str | Path, bar, teacher: Teacher):
    """Whatever ends a generator (done, Ctrl-C, SIGTERM, an error), the summary says so and is saved next to `out`."""
    try:
        with _GATE.installed():
            yield
    except KeyboardInterrupt as e:
        by = f" by {e.signal_name}" if isinstance(e, Interrupted) else ""
        summary.stopped = f"interrupted{by} (everything written so far is kept; run again to resume)"
        raise
    except BaseException as e:
        summary.stopped = f"error: {e}"
        raise
    finally:
        bar.close()
        summary.notes = list(teacher.notes)
        save_summary(summary, out)


def check_answered(summary: DatagenSummary) -> None:
    """A run whose requests failed and that got nothing back must not end as if it had worked.

    Raises:
        TeacherError: requests failed and nothing was produced; names the last failure and the summary file.
    """
    if summary.failed_requests and not summary.produced:
        raise TeacherError(f"{summary.failed_requests} of {summary.requests} requests to the teacher "
                           f"{summary.teacher} failed and nothing was produced (last failure: "
                           f"{summary.last_failure}); check that it is running and --teacher-url, --teacher-model "
                           f"and --max-tokens (summary: {summary_path(summary.out)})", report=summary.text())
