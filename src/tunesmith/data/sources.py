"""Training data from one file (`data.path`) or several mixed by weight (`data.sources`), read as a stream.

A file is read three times instead of being held as a million Python objects: once to detect its shape (from all
rows; not when `data.shape` is given), once to validate every record (and count the baked-in templates), once to
hand the valid records, stripped, to tokenization. Only the rejected records and a few counters stay in memory.

Mixing (`mixed_counts`): without weights every record of every source is used. With weights, the weights set each
source's share of the mixed training set, and no record is repeated: the source that is scarcest for its weight is
used whole and the others are subsampled (seeded) to their share. Repeating a small source would train it for
several epochs in one and overfit it silently (what LLaMA-Factory's `interleave_probs` with `all_exhausted` does);
to use a small source more often, give it a larger weight and the others are cut to match. `max_records` caps a
source first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import islice
from typing import Iterator

import numpy as np

from tunesmith.config import DataConfig, SourceConfig
from tunesmith.data.load import RawRow, iter_rows
from tunesmith.data.records import Record
from tunesmith.data.shapes import columns_for, detect_shape
from tunesmith.data.strip import Stripped, baked_form, is_stripped, strip_record
from tunesmith.data.validate import Rejected, refuse_invalid, to_records
from tunesmith.errors import DataError, DataProblem

__all__ = ["ScannedFile", "StripTally", "mixed_counts", "sample_indices", "scan_file", "source_data", "source_list",
           "strip_plan", "stripped_summary"]

CHUNK_RECORDS = 4096
"""Rows converted and validated at a time."""

SOURCE_KEYS = ("shape", "prompt_key", "input_key", "response_key", "system_key", "messages_key", "text_key")
"""The settings a source may give for itself; left empty, `data`'s apply."""


def source_list(data: DataConfig) -> list[SourceConfig]:
    """The configured training files: `data.sources`, or `data.path` (with `data.test_path`) as the one source.

    >>> [s.path for s in source_list(DataConfig(path="a.jsonl"))]
    ['a.jsonl']
    """
    if data.sources:
        return list(data.sources)
    return [SourceConfig(path=data.path, test_path=data.test_path)] if data.path else []


def source_data(data: DataConfig, source: SourceConfig) -> DataConfig:
    """The `data` settings that read one source: its own shape and keys where it gives them."""
    own = {key: getattr(source, key) for key in SOURCE_KEYS if getattr(source, key) is not None}
    return data.model_copy(update={"path": source.path, "test_path": source.test_path, "sources": [], **own})


class _GoodRows:
    """The parsed rows of a file, re-read from disk on each iteration (so `detect_shape` sees all of them)."""

    def __init__(self, path: str, max_record_bytes: int):
        self.path, self.max_record_bytes, self.count = path, max_record_bytes, None

    def __iter__(self) -> Iterator[dict]:
        count = 0
        for row in iter_rows(self.path, self.max_record_bytes):
            if row.problem is None:
                count += 1
                yield row.data
        self.count = count

    def __len__(self) -> int:
        if self.count is None:
            self.count = sum(1 for _ in self)
        return self.count

    def __bool__(self) -> bool:
        """Whether there is any row, without reading the whole file for it."""
        return self.count > 0 if self.count is not None else next(iter(self), None) is not None


def _chunks(rows: Iterator[RawRow], size: int) -> Iterator[list[RawRow]]:
    while chunk := list(islice(rows, size)):
        yield chunk


@dataclass
class StripTally:
    """How many records stripping a baked-in template changed, and the first of them before and after."""

    changed: int = 0
    first: tuple[Record, Record] | None = None

    def add(self, before: Record, after: Record) -> None:
        self.changed += 1
        self.first = self.first or (before, after)


@dataclass
class ScannedFile:
    """One data file after the shape and validation passes: what it holds, and a way to stream its records."""

    path: str
    data: DataConfig
    shape: str
    reason: str
    total: int
    """Records in the file, valid and invalid."""
    rejected: list[Rejected] = field(default_factory=list)
    form: str | None = None
    """The baked-in template form most prompts carry (`tunesmith.data.strip.baked_form`)."""
    carried: int = 0

    @property
    def skipped(self) -> list[DataProblem]:
        return [r.problem for r in self.rejected]

    @property
    def valid(self) -> int:
        return self.total - len(self.rejected)

    def records(self, form: str | None = None, tally: StripTally | None = None) -> Iterator[Record]:
        """The valid records in file order, with the baked-in template `form` stripped (counted in `tally`)."""
        columns = columns_for(self.shape, self.data)
        for chunk in _chunks(iter_rows(self.path, self.data.max_record_bytes), CHUNK_RECORDS):
            good = [r for r in chunk if r.problem is None]
            records, _ = to_records([r.data for r in good], self.shape, columns, self.path, [r.line for r in good])
            for record in records:
                stripped = strip_record(record, form) if form else record
                if tally is not None and stripped is not record:
                    tally.add(record, stripped)
                yield stripped


def scan_file(path: str, data: DataConfig) -> ScannedFile:
    """Detect the shape of a file from all its rows and validate every record, holding only the rejected.

    Raises:
        DataError: the file is unreadable, its shape unknown, no record in it is valid, or `data.on_error` does not
            skip its invalid records.
    """
    file = str(path)
    rows = _GoodRows(file, data.max_record_bytes)
    if data.shape == "auto" and not rows:
        raise DataError([r.problem for r in iter_rows(file, data.max_record_bytes) if r.problem]
                        or [DataProblem(file, None, None, "no records to read (the file is empty)")])
    shape, reason = detect_shape(rows, data, file=file)
    scanned = ScannedFile(file, data, shape, reason, total=0)
    columns = columns_for(shape, data)

    def valid_records() -> Iterator[Record]:
        for chunk in _chunks(iter_rows(file, data.max_record_bytes), CHUNK_RECORDS):
            scanned.total += len(chunk)
            scanned.rejected += [Rejected(r.problem) for r in chunk if r.problem is not None]
            good = [r for r in chunk if r.problem is None]
            records, bad = to_records([r.data for r in good], shape, columns, file, [r.line for r in good])
            scanned.rejected += bad
            yield from records

    scanned.form, scanned.carried = baked_form(valid_records())
    scanned.rejected.sort(key=lambda r: r.problem.line or 0)
    if not scanned.valid:
        problems = scanned.skipped or [DataProblem(file, None, None, "no records to read (the file is empty)")]
        raise DataError(problems, hint=f"none of the {len(problems):,} records is valid: check data.shape and the "
                                       f"key settings (data.prompt_key, data.response_key, ...)"
                        if scanned.skipped else "")
    refuse_invalid(scanned.skipped, scanned.total, data.on_error)
    return scanned


def strip_plan(scanned: ScannedFile, setting: bool | str) -> str | None:
    """The baked-in form `data.strip_template` removes from this file (and its test file), or None."""
    return scanned.form if is_stripped(scanned.form, scanned.carried, scanned.valid, setting) else None


def stripped_summary(scanned: ScannedFile, setting: bool | str, tally: StripTally) -> Stripped:
    """What stripping did to a file, as `tunesmith.data.strip.strip_templates` reports it."""
    name = setting if isinstance(setting, str) else str(setting).lower()
    if tally.first is None:
        return Stripped(name, scanned.form, scanned.carried, 0, scanned.valid)
    before, after = tally.first
    return Stripped(name, scanned.form, scanned.carried, tally.changed, scanned.valid, where=before.where,
                    before=before.prompt, after=after.prompt)


def mixed_counts(available: list[int], weights: list[float | None]) -> list[int]:
    """How many training records each source gives the mixed set (see the module docstring).

    >>> mixed_counts([900, 100], [None, None]), mixed_counts([900, 100], [3, 1]), mixed_counts([900, 600], [1, 1])
    ([900, 100], [300, 100], [600, 600])
    """
    if not weights or any(w is None for w in weights):
        return list(available)
    total_weight = sum(weights)
    mixed = min(n / (w / total_weight) for n, w in zip(available, weights))
    return [min(n, round(mixed * w / total_weight)) for n, w in zip(available, weights)]


def sample_indices(count: int, keep: int, seed: int, source_index: int) -> np.ndarray:
    """`keep` of `count` positions, seeded per source, in ascending (file) order; all of them when keep >= count.

    >>> sample_indices(5, 9, 0, 0).tolist()
    [0, 1, 2, 3, 4]
    """
    if keep >= count:
        return np.arange(count)
    return np.sort(np.random.default_rng([seed, source_index]).choice(count, size=keep, replace=False))
