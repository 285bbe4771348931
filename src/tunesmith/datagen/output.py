"""Resumable output: append-only JSONL that survives a crash, and the summary written next to it.

Generation costs money and hours, so every record is appended as one whole line and fsynced; re-running the
same command reads what is there (a torn last line from a crash is cut away), skips work already done and
appends only what is missing. Whatever ends a run, `<out>.summary.json` says what it asked for, kept,
dropped (and why) and cost.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from tunesmith.datagen.teachers import TeacherFailure, TeacherReply
from tunesmith.errors import DataError
from tunesmith.runs import atomic_write_json


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


@contextlib.contextmanager
def recording_stop(summary: DatagenSummary, out: str | Path, bar):
    """Whatever ends a generator (done, Ctrl-C, an error), the summary says so and is saved next to `out`."""
    try:
        yield
    except KeyboardInterrupt:
        summary.stopped = "interrupted (everything written so far is kept; run again to resume)"
        raise
    except BaseException as e:
        summary.stopped = f"error: {e}"
        raise
    finally:
        bar.close()
        save_summary(summary, out)
