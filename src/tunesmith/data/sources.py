"""Training data from one file (`data.path`) or several mixed by weight (`data.sources`), read as a stream.

A file is read three times instead of being held as a million Python objects: once to detect its shape (from all
rows; not when `data.shape` is given), once to validate every record (and count the baked-in templates; a large
file's in a forked process, at the same time as the first), once to hand the valid records, stripped, to
tokenization. Only the rejected records and a few counters stay in memory.

Mixing (`mixed_counts`): without weights every record of every source is used. With weights, the weights set each
source's share of the mixed training set, and no record is repeated: the source that is scarcest for its weight is
used whole and the others are subsampled (seeded) to their share. Repeating a small source would train it for
several epochs in one and overfit it silently (what LLaMA-Factory's `interleave_probs` with `all_exhausted` does);
to use a small source more often, give it a larger weight and the others are cut to match. `max_records` caps a
source first.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Iterator

import numpy as np

from tunesmith.config import DataConfig, SourceConfig
from tunesmith.data.load import RawRow, iter_rows
from tunesmith.data.records import Record
from tunesmith.data.shapes import columns_for, detect_shape
from tunesmith.data.strip import Stripped, baked_form, is_stripped, strip_record
from tunesmith.data.validate import Rejected, refuse_invalid, to_records
from tunesmith.errors import DataError, DataProblem, TunesmithError

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


PARALLEL_SCAN_BYTES = 16 << 20
"""Files from this size are validated in a forked process while this one detects their shape (`scan_file`)."""


@dataclass
class _Validation:
    """What validating every row of a file as one shape found."""

    total: int
    rejected: list[Rejected]
    form: str | None
    carried: int


def _validate(file: str, data: DataConfig, shape: str) -> _Validation:
    """Every row of `file` converted and checked as `shape`: the rows, the rejected (in line order), and the
    baked-in template form most prompts carry (`tunesmith.data.strip.baked_form`)."""
    columns = columns_for(shape, data)
    total, rejected = 0, []

    def valid_records() -> Iterator[Record]:
        nonlocal total
        for chunk in _chunks(iter_rows(file, data.max_record_bytes), CHUNK_RECORDS):
            total += len(chunk)
            rejected.extend(Rejected(r.problem) for r in chunk if r.problem is not None)
            good = [r for r in chunk if r.problem is None]
            records, bad = to_records([r.data for r in good], shape, columns, file, [r.line for r in good])
            rejected.extend(bad)
            yield from records

    form, carried = baked_form(valid_records())
    return _Validation(total, sorted(rejected, key=lambda r: r.problem.line or 0), form, carried)


def _validate_in_worker(file: str, data: DataConfig, shape: str) -> _Validation | None:
    """`_validate` in a worker process; None on a typed error (not all survive pickling), which the parent then
    meets itself."""
    try:
        return _validate(file, data, shape)
    except TunesmithError:
        return None


def _first_shape(file: str, data: DataConfig) -> str | None:
    """The shape of the file's first `CHUNK_RECORDS` rows, or None when none of them fits one."""
    good = [r.data for r in islice(iter_rows(file, data.max_record_bytes), CHUNK_RECORDS) if r.problem is None]
    try:
        return detect_shape(good, data, file=file)[0] if good else None
    except DataError:
        return None


def _scans_in_parallel(file: str, data: DataConfig) -> bool:
    """Whether validation of `file` runs beside shape detection: a large file whose shape is detected, and a second
    core to run it on (Linux, where `multiprocessing` forks)."""
    path = Path(file)
    return (data.shape == "auto" and path.is_file() and path.stat().st_size >= PARALLEL_SCAN_BYTES
            and hasattr(os, "sched_getaffinity") and len(os.sched_getaffinity(0)) > 1)


def scan_file(path: str, data: DataConfig) -> ScannedFile:
    """Detect the shape of a file from all its rows and validate every record, holding only the rejected.

    Both passes read and parse the whole file, so for a large one (`PARALLEL_SCAN_BYTES`) validation runs in a
    forked process at the same time, as the shape of the file's first rows; when the whole file's shape turns out
    different, it runs again here as that one.

    Raises:
        DataError: the file is unreadable, its shape unknown, no record in it is valid, or `data.on_error` does not
            skip its invalid records.
    """
    file = str(path)
    rows = _GoodRows(file, data.max_record_bytes)
    if data.shape == "auto" and not rows:
        raise DataError([r.problem for r in iter_rows(file, data.max_record_bytes) if r.problem]
                        or [DataProblem(file, None, None, "no records to read (the file is empty)")])
    guess = _first_shape(file, data) if _scans_in_parallel(file, data) else None
    validation = None
    if guess is None:
        shape, reason = detect_shape(rows, data, file=file)
    else:
        import multiprocessing

        with multiprocessing.get_context("fork").Pool(1) as pool:  # leaving it stops a validation not needed
            pending = pool.apply_async(_validate_in_worker, (file, data, guess))
            shape, reason = detect_shape(rows, data, file=file)
            validation = pending.get() if shape == guess else None
    validation = validation or _validate(file, data, shape)
    scanned = ScannedFile(file, data, shape, reason, total=validation.total, rejected=validation.rejected,
                          form=validation.form, carried=validation.carried)
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
