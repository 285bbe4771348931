"""The tokenized records of one preparation on disk, before truncation, so a million records never sit in memory.

`write_spool` renders and tokenizes the record streams chunk by chunk (the fast tokenizer's batch encode) into one
Arrow file: each record's full `input_ids`, its `labels` (masked by position, as `tokenization` does) and the
record itself as JSON; beside it a few numbers a record stay in memory (lengths, where the answer starts, the split
key, the source). `max_length` is resolved from those lengths, and then `windows` and `write_split` read the file
memory-mapped: the truncation window of every example and the loss it keeps, and the final splits written as the
`datasets` folders training memory-maps in turn.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from tunesmith.config import TemplateConfig, TokenizationConfig
from tunesmith.data import Record, record_from_dict, record_to_dict
from tunesmith.data.lengths import kept_window
from tunesmith.errors import TunesmithError
from tunesmith.prepare.split import group_key
from tunesmith.prepare.tokenization import IGNORE_INDEX, MaskingStrategy, TokenizedRecord, tokenize_records

__all__ = ["Spool", "SpoolReader", "Windows", "iter_records", "windows", "write_spool", "write_split"]

SPOOL_RECORDS = 4096
"""Records rendered, tokenized and written at a time; also the rows read back at a time."""

SPOOL_WORKERS = 1
"""Processes that render and tokenize (forked; 1: this process). Two wrote the same file but were measured no faster
on the shared, loaded 2-core machine (18% more CPU for pickling the chunks); `bench/data_scale.py --workers 2`
measures them on a quiet one."""


def _schema():
    import pyarrow as pa

    return pa.schema([("input_ids", pa.list_(pa.int32())), ("labels", pa.list_(pa.int32())),
                      ("record", pa.string())])


@dataclass
class Spool:
    """Where the tokenized records are, and per row (in the order written) what the later steps decide on."""

    path: Path
    source: np.ndarray
    """Index of the source a row came from."""
    from_test_file: np.ndarray
    """True for rows of a source's own test file."""
    prompt_tokens: np.ndarray
    response_tokens: np.ndarray
    answer_start: np.ndarray
    keys: np.ndarray
    """`tunesmith.prepare.split.group_key` of each row (32 bytes)."""
    batch_rows: list[int]
    """Rows of each record batch of the file, in order."""

    @property
    def totals(self) -> np.ndarray:
        return self.prompt_tokens + self.response_tokens

    def table(self) -> SpoolReader:
        """The spool's rows, read a record batch at a time."""
        return SpoolReader(self.path, self.batch_rows)


class SpoolReader:
    """Rows of the spool file by index, read a record batch at a time into memory that is freed again.

    Not memory-mapped: mapped pages that were read stay resident (and count in the process's RSS) until the
    kernel needs them, and a million records read end to end would be gigabytes of them. Rows are asked for in
    ascending order per source (`assign_rows` keeps each source in file order), so a few cached batches, one per
    source being read, serve every request.
    """

    CACHED_BATCHES = 8

    def __init__(self, path: Path, batch_rows: list[int]):
        import pyarrow as pa

        self._reader = pa.ipc.open_file(pa.OSFile(str(path)))
        self._starts = np.cumsum([0] + batch_rows)
        self._cache: dict[int, object] = {}

    def _batch(self, index: int):
        if index not in self._cache:
            if len(self._cache) >= self.CACHED_BATCHES:
                self._cache.pop(next(iter(self._cache)))
            self._cache[index] = self._reader.get_batch(index)
        return self._cache[index]

    def batches(self) -> Iterator:
        """Every record batch, in order."""
        for index in range(self._reader.num_record_batches):
            yield self._reader.get_batch(index)

    def take(self, rows: np.ndarray):
        """The rows `rows` (in that order) as one Arrow table."""
        import pyarrow as pa

        starts = self._starts
        which = np.searchsorted(starts, rows, side="right") - 1
        parts, positions = [], []
        for index in np.unique(which).tolist():
            picked = np.flatnonzero(which == index)
            batch = self._batch(index)
            parts.append(pa.Table.from_batches([batch]).take(pa.array(rows[picked] - starts[index])))
            positions.append(picked)
        if not parts:
            return pa.Table.from_batches([], schema=_schema())
        table = pa.concat_tables(parts)
        return table.take(pa.array(np.argsort(np.concatenate(positions), kind="stable")))


def _chunks(records: Iterator[Record], size: int) -> Iterator[list[Record]]:
    chunk: list[Record] = []
    for record in records:
        chunk.append(record)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _full_columns(tokenized: list[TokenizedRecord], tokenization: TokenizationConfig):
    """The `input_ids` and `labels` columns of a chunk (each record's `full_example`), built as flat arrays: a
    list of Python lists per record costs more than the tokenizer's batch encode of them.

    pieces ((5, 6), (7, 2)), trainable (False, True), train_on=responses -> [[5, 6, 7, 2]], [[-100, -100, 7, 2]]
    """
    import pyarrow as pa

    train_all = MaskingStrategy(tokenization.train_on) is MaskingStrategy.ALL
    pieces = [piece for t in tokenized for piece in t.pieces]
    lengths = np.fromiter(map(len, pieces), dtype=np.int64, count=len(pieces))
    ids = np.fromiter(chain.from_iterable(pieces), dtype=np.int32, count=int(lengths.sum()))
    trained = np.fromiter((train_all or flag for t in tokenized for flag in t.trainable), dtype=bool,
                          count=len(pieces))
    labels = np.where(np.repeat(trained, lengths), ids, np.int32(IGNORE_INDEX)).astype(np.int32)
    offsets = pa.array(np.concatenate([[0], np.cumsum([t.total_tokens for t in tokenized])]).astype(np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(ids)), pa.ListArray.from_arrays(offsets, pa.array(labels))


def _spool_batch(chunk: list[Record], tokenizer, template: TemplateConfig, tokenization: TokenizationConfig,
                 seed: int) -> tuple:
    """One chunk's record batch of the spool file, and its prompt/response lengths, answer starts and split keys."""
    import pyarrow as pa

    tokenized = tokenize_records(chunk, tokenizer, template)
    batch = pa.record_batch([*_full_columns(tokenized, tokenization),
                             pa.array([json.dumps(record_to_dict(r), ensure_ascii=False) for r in chunk])],
                            schema=_schema())
    return (batch, np.array([t.prompt_tokens for t in tokenized], dtype=np.int64),
            np.array([t.response_tokens for t in tokenized], dtype=np.int64),
            np.array([t.answer_start for t in tokenized], dtype=np.int64),
            np.array([group_key(r, seed) for r in chunk], dtype="S32"))


_worker_settings: tuple = ()
"""(tokenizer, template, tokenization, seed) in a worker process, inherited when it forks."""


def _set_worker(*settings) -> None:
    global _worker_settings
    _worker_settings = settings
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the workers are the parallelism, one core each


def _worker_batch(chunk: list[Record]) -> tuple | None:
    """`_spool_batch` in a worker; None when a record cannot be rendered, so the parent redoes the chunk itself
    and raises the very error a single process would (typed errors do not all survive pickling)."""
    try:
        return _spool_batch(chunk, *_worker_settings)
    except TunesmithError:
        return None


def _batches(chunks: Iterator[list[Record]], settings: tuple, workers: int) -> Iterator[tuple]:
    """`_spool_batch` of each chunk, in order: in this process, or in `workers` forked ones with a few chunks in
    flight each (never the whole stream queued), the results taken in submission order so the file is the same."""
    if workers <= 1:
        yield from (_spool_batch(chunk, *settings) for chunk in chunks)
        return
    import multiprocessing
    from collections import deque

    with multiprocessing.get_context("fork").Pool(workers, initializer=_set_worker, initargs=settings) as pool:
        pending: deque = deque()
        for chunk in chunks:
            pending.append((chunk, pool.apply_async(_worker_batch, (chunk,))))
            if len(pending) >= 2 * workers:
                done, result = pending.popleft()
                yield result.get() or _spool_batch(done, *settings)
        while pending:
            done, result = pending.popleft()
            yield result.get() or _spool_batch(done, *settings)


def write_spool(path: Path, streams: Iterable[tuple[int, bool, Iterator[Record]]], tokenizer,
                template: TemplateConfig, tokenization: TokenizationConfig, seed: int, progress=None,
                workers: int | None = None) -> Spool:
    """Tokenize every record of `streams` ((source index, from a test file, records)) into the Arrow file `path`,
    in `workers` processes (default `SPOOL_WORKERS`); the file is the same for any number of them.

    Raises:
        ConfigError, DataError: a record the template cannot render.
    """
    import pyarrow as pa

    columns: dict[str, list[np.ndarray]] = {k: [] for k in ("source", "test", "prompt", "response", "answer", "keys")}
    batch_rows: list[int] = []
    origins: list[tuple[int, bool]] = []

    def chunks() -> Iterator[list[Record]]:
        for source, from_test_file, records in streams:
            for chunk in _chunks(records, SPOOL_RECORDS):
                origins.append((source, from_test_file))
                yield chunk

    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, _schema()) as writer:
        settings = (tokenizer, template, tokenization, seed)
        workers = SPOOL_WORKERS if workers is None else workers
        for index, (batch, prompt, response, answer, keys) in enumerate(_batches(chunks(), settings, workers)):
            source, from_test_file = origins[index]
            writer.write_batch(batch)
            batch_rows.append(batch.num_rows)
            columns["source"].append(np.full(batch.num_rows, source, dtype=np.int32))
            columns["test"].append(np.full(batch.num_rows, from_test_file))
            for key, values in (("prompt", prompt), ("response", response), ("answer", answer), ("keys", keys)):
                columns[key].append(values)
            if progress is not None:
                progress.update(batch.num_rows)
    joined = {k: np.concatenate(v) if v else np.zeros(0, dtype="S32" if k == "keys" else np.int64)
              for k, v in columns.items()}
    return Spool(path, joined["source"], joined["test"].astype(bool), joined["prompt"], joined["response"],
                 joined["answer"], joined["keys"], batch_rows)


@dataclass(frozen=True)
class Windows:
    """Per spool row: the tokens kept by truncation (`start`..`end`) and how many of them carry a loss."""

    start: np.ndarray
    end: np.ndarray
    loss: np.ndarray

    @property
    def kept(self) -> np.ndarray:
        """Rows with a loss-bearing token left (the others are dropped)."""
        return self.loss > 0


def windows(spool: Spool, table: SpoolReader, max_length: int, tokenization: TokenizationConfig) -> Windows:
    """The truncation window of every row (`tunesmith.data.lengths.kept_window`) and the loss tokens inside it,
    read batch by batch from the labels (the first position's label never counts)."""
    bounds = [kept_window(int(total), int(answer), max_length, tokenization.truncation_side)
              for total, answer in zip(spool.totals, spool.answer_start)]
    start = np.array([s for s, _ in bounds], dtype=np.int64).reshape(-1)
    end = np.array([e for _, e in bounds], dtype=np.int64).reshape(-1)
    loss = np.zeros(len(start), dtype=np.int64)
    row = 0
    for batch in table.batches():
        chunk = batch.column("labels")
        offsets = chunk.offsets.to_numpy()
        counted = np.concatenate([[0], np.cumsum(chunk.values.to_numpy() != IGNORE_INDEX)])
        rows = slice(row, row + len(chunk))
        first = offsets[:-1] + np.minimum(start[rows] + 1, end[rows])
        loss[rows] = counted[offsets[:-1] + end[rows]] - counted[first]
        row += len(chunk)
    return Windows(start, end, loss)


def _cut(column, start: np.ndarray, end: np.ndarray):
    """Each list of `column` (one Arrow chunk) cut to its window, as a new list<int32> array."""
    import pyarrow as pa

    offsets = column.offsets.to_numpy()[:-1]
    values = column.values.to_numpy()
    lengths = end - start
    new_offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    gather = np.repeat(offsets + start - new_offsets[:-1], lengths) + np.arange(new_offsets[-1])
    return pa.ListArray.from_arrays(pa.array(new_offsets), pa.array(values[gather], type=pa.int32()))


def write_split(folder: Path, name: str, table: SpoolReader, rows: np.ndarray, cuts: Windows) -> None:
    """Rows `rows` of the spool (in that order), truncated, as the `datasets` folder `folder/name` plus
    `folder/name_records.jsonl` with the records in the same order."""
    import pyarrow as pa
    from datasets import Dataset

    schema = pa.schema([("input_ids", pa.list_(pa.int32())), ("labels", pa.list_(pa.int32()))])
    arrow = folder / f"{name}.arrow"
    with pa.OSFile(str(arrow), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer, \
            (folder / f"{name}_records.jsonl").open("w", encoding="utf-8") as records:
        for begin in range(0, len(rows), SPOOL_RECORDS):
            part = rows[begin:begin + SPOOL_RECORDS]
            taken = table.take(part).combine_chunks()
            start, end = cuts.start[part], cuts.end[part]
            writer.write_batch(pa.record_batch([_cut(taken.column(key).chunks[0], start, end)
                                                for key in ("input_ids", "labels")], schema=schema))
            records.write("".join(line + "\n" for line in taken.column("record").to_pylist()))
    Dataset.from_file(str(arrow)).save_to_disk(str(folder / name))
    arrow.unlink()


def iter_records(table: SpoolReader, rows: np.ndarray) -> Iterator[Record]:
    """The records of spool rows `rows`, in that order, read a chunk at a time."""
    for begin in range(0, len(rows), SPOOL_RECORDS):
        part = table.take(rows[begin:begin + SPOOL_RECORDS]).column("record").to_pylist()
        yield from (record_from_dict(json.loads(line)) for line in part)
