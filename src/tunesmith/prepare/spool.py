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
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from tunesmith.config import TemplateConfig, TokenizationConfig
from tunesmith.data import Record, record_from_dict, record_to_dict
from tunesmith.data.lengths import kept_window
from tunesmith.data.records import has_tool_calls
from tunesmith.data.stats import is_marked
from tunesmith.errors import TunesmithError
from tunesmith.prepare.split import group_key
from tunesmith.prepare.templates import Segment
from tunesmith.prepare.tokenization import (IGNORE_INDEX, MaskingStrategy, encode_texts, render_records, segment_texts,
                                           special_prefix)

__all__ = ["Spool", "SpoolReader", "Windows", "iter_records", "spool_workers", "tokenizer_threads", "windows",
           "write_spool", "write_split"]

SPOOL_RECORDS = 4096
"""Records rendered, tokenized and written at a time; also the rows read back at a time."""

SPOOL_COMPRESSION = "lz4"
"""How the spool's record batches are compressed (Arrow IPC; None: not at all). The spool is written and read again
within minutes, but on a disk that writes ~60 MB/s the kernel is still flushing 1.8 GB of it (a million records)
while the splits are written, and the writers pay for that in system time; lz4 makes it ~3.5x smaller for ~5 s of
CPU a million records."""

SPOOL_WORKERS: int | None = None
"""Processes that render and tokenize (forked; 1: this process); None: `spool_workers` decides from the data."""

WORKERS_FROM_RECORDS = 20_000
"""Records from which `spool_workers` forks workers: below it, starting them (~1 s) costs more than they save."""

MAX_SPOOL_WORKERS = 4
"""Workers at most: the parent reads, pickles and writes every chunk, which caps what more of them would gain."""


def spool_workers(records: int) -> int:
    """How many processes tokenize `records` records: `SPOOL_WORKERS` when set, else one per core this process may
    use (at most `MAX_SPOOL_WORKERS`) from `WORKERS_FROM_RECORDS` records on Linux, where forking is what
    `multiprocessing` does by default; one otherwise.

    Measured at a million records on 2 cores (`bench/data_scale.py`): with the word encoder's Python encode, two
    workers halve the tokenizing phase; the tokenizer's own threads did not, since the Python part of every chunk
    then ran on one core.
    """
    if SPOOL_WORKERS is not None:
        return SPOOL_WORKERS
    if records < WORKERS_FROM_RECORDS or not hasattr(os, "sched_getaffinity"):
        return 1
    return max(1, min(len(os.sched_getaffinity(0)), MAX_SPOOL_WORKERS))


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
    marked: np.ndarray
    """True for rows whose record holds a template marker (`tunesmith.data.stats.is_marked`)."""
    profile: np.ndarray
    """Index into `profiles` of each row's record: its shape and kind, and whether it uses tools, for the
    statistics."""
    profiles: list[tuple[str, str, bool]]
    """(shape, kind, `has_tool_calls`) of the records, in the order first written."""

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

    def cut(self, rows: np.ndarray, start: np.ndarray, end: np.ndarray) -> tuple:
        """Rows `rows` (in that order), row i cut to its tokens `start[i]:end[i]`: `input_ids` and `labels` as
        list<int32> arrays, and the records as a string array.

        The windows are copied straight out of each record batch's flat values with numpy, once per batch the rows
        touch (an Arrow take of the list columns, then a cut, copies every token twice).
        """
        import pyarrow as pa

        lengths = end - start
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        columns = {key: np.empty(int(offsets[-1]), dtype=np.int32) for key in ("input_ids", "labels")}
        batch_of = np.searchsorted(self._starts, rows, side="right") - 1
        records, positions = [], []
        for index in np.unique(batch_of).tolist():
            mine = np.flatnonzero(batch_of == index)
            batch, local, count = self._batch(index), rows[mine] - self._starts[index], lengths[mine]
            within = np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count)
            for key, out in columns.items():
                column = batch.column(key)
                source = column.offsets.to_numpy()[local] + start[mine]
                out[np.repeat(offsets[mine], count) + within] = column.values.to_numpy()[np.repeat(source, count) + within]
            records.append(batch.column("record").take(pa.array(local)))
            positions.append(mine)
        list_offsets = pa.array(offsets.astype(np.int32))
        ids, labels = (pa.ListArray.from_arrays(list_offsets, pa.array(columns[key])) for key in ("input_ids", "labels"))
        if not records:
            return ids, labels, pa.array([], type=pa.string())
        order = np.argsort(np.concatenate(positions), kind="stable")
        return ids, labels, pa.concat_arrays(records).take(pa.array(order))

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


def _flat_pieces(rendered: list[list[Segment]], ids: list[list[int]], prefix: tuple[int, ...]) -> tuple:
    """The encoded segments of a chunk as (pieces, trainable per piece, pieces per record), the tokenizer's special
    `prefix` put in front of each record that does not start with it (as `group_pieces` does)."""
    trainable = [s.trainable for segments in rendered for s in segments]
    counts = [len(segments) for segments in rendered]
    if not prefix:
        return ids, trainable, counts
    pieces, flags, counts, position = [], [], [], 0
    for segments in rendered:
        own = ids[position:position + len(segments)]
        own_flags = trainable[position:position + len(segments)]
        position += len(segments)
        if not (own and tuple(own[0][:len(prefix)]) == prefix):
            own, own_flags = [list(prefix), *own], [False, *own_flags]
        pieces += own
        flags += own_flags
        counts.append(len(own))
    return pieces, flags, counts


def _flat_columns(pieces: list, trainable: list[bool], counts: list[int], tokenization: TokenizationConfig) -> tuple:
    """A chunk's `input_ids` and `labels` columns (each record's `full_example`) and its prompt tokens, response
    tokens and answer starts (the `TokenizedRecord` properties), all from flat arrays: Python lists and sums per
    record cost more than the tokenizer's batch encode of them.

    pieces [(5, 6), (7, 2)], trainable [False, True], counts [2], train_on=responses
    -> [[5, 6, 7, 2]], [[-100, -100, 7, 2]], prompt [2], response [2], answer start [2]
    """
    import pyarrow as pa

    lengths = np.fromiter(map(len, pieces), dtype=np.int64, count=len(pieces))
    ids = np.fromiter(chain.from_iterable(pieces), dtype=np.int32, count=int(lengths.sum()))
    flags = np.array(trainable, dtype=bool).reshape(-1)
    owner = np.repeat(np.arange(len(counts)), counts)
    prompt = np.bincount(owner, weights=np.where(flags, 0, lengths), minlength=len(counts)).astype(np.int64)
    response = np.bincount(owner, weights=np.where(flags, lengths, 0), minlength=len(counts)).astype(np.int64)
    ends = np.cumsum(prompt + response)
    record_starts = ends - prompt - response
    piece_offsets = np.cumsum(lengths) - lengths - record_starts[owner]  # where each piece starts in its record
    answer = np.zeros(len(counts), dtype=np.int64)
    np.maximum.at(answer, owner[flags], piece_offsets[flags])  # the last trainable piece starts furthest in
    trained = flags | (MaskingStrategy(tokenization.train_on) is MaskingStrategy.ALL)
    labels = np.where(np.repeat(trained, lengths), ids, np.int32(IGNORE_INDEX)).astype(np.int32)
    offsets = pa.array(np.concatenate([[0], ends]).astype(np.int32))
    return (pa.ListArray.from_arrays(offsets, pa.array(ids)), pa.ListArray.from_arrays(offsets, pa.array(labels)),
            prompt, response, answer)


def _finished_batch(chunk: list[Record], rendered: list[list[Segment]], ids: list[list[int]],
                    prefix: tuple[int, ...], tokenization: TokenizationConfig, seed: int) -> tuple:
    """One chunk's record batch of the spool file, and per record its prompt/response lengths, answer start, split
    key, template-marker flag and (shape, kind, uses tools), from its rendered segments and their ids."""
    import pyarrow as pa

    input_ids, labels, prompt, response, answer = _flat_columns(*_flat_pieces(rendered, ids, prefix), tokenization)
    batch = pa.record_batch([input_ids, labels,
                             pa.array([json.dumps(record_to_dict(r), ensure_ascii=False) for r in chunk])],
                            schema=_schema())
    return (batch, prompt, response, answer, np.array([group_key(r, seed) for r in chunk], dtype="S32"),
            np.fromiter(map(is_marked, chunk), dtype=bool, count=len(chunk)),
            [(r.shape, r.kind, has_tool_calls(r)) for r in chunk])


def _spool_batch(chunk: list[Record], tokenizer, template: TemplateConfig, tokenization: TokenizationConfig,
                 seed: int) -> tuple:
    """`_finished_batch` of a chunk, rendered and encoded here (a worker process's whole job)."""
    rendered = render_records(chunk, tokenizer, template)
    ids = encode_texts(tokenizer, segment_texts(rendered))
    return _finished_batch(chunk, rendered, ids, tuple(special_prefix(tokenizer)), tokenization, seed)


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


@contextmanager
def tokenizer_threads() -> Iterator[None]:
    """The tokenizer's batch encode on all cores (its own threads) for the duration, whatever
    `TOKENIZERS_PARALLELISM` says, then the setting as it was.

    The CLI turns those threads off for the process (`quiet_libraries`): the tokenizers library warns, and turns
    them off itself, when a process forks after using them. Here no fork happens while they run (the
    worker-process path does not use this), and the setting is back before anything else runs, so a later fork
    finds them configured off again: no warning, no deadlock. `RAYON_NUM_THREADS` caps the threads.
    """
    before = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "true"
    try:
        yield
    finally:
        if before is None:
            del os.environ["TOKENIZERS_PARALLELISM"]
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = before


def _overlapped_batches(chunks: Iterator[list[Record]], settings: tuple) -> Iterator[tuple]:
    """`_spool_batch` of each chunk, in order, in this process: chunk k is encoded in a thread (the tokenizer
    runs without the GIL, on its own threads) while this one reads and renders chunk k+1 and finishes chunk k-1,
    so the Python work and the encode share the cores instead of taking turns."""
    from concurrent.futures import ThreadPoolExecutor

    tokenizer, template, tokenization, seed = settings
    prefix = tuple(special_prefix(tokenizer))
    with tokenizer_threads(), ThreadPoolExecutor(1, thread_name_prefix="tunesmith-encode") as pool:
        pending = None
        for chunk in chunks:
            rendered = render_records(chunk, tokenizer, template)
            encoding = pool.submit(encode_texts, tokenizer, segment_texts(rendered))
            if pending is not None:
                yield _finished_batch(*pending[:2], pending[2].result(), prefix, tokenization, seed)
            pending = (chunk, rendered, encoding)
        if pending is not None:
            yield _finished_batch(*pending[:2], pending[2].result(), prefix, tokenization, seed)


def _batches(chunks: Iterator[list[Record]], settings: tuple, workers: int) -> Iterator[tuple]:
    """`_spool_batch` of each chunk, in order: in this process (`_overlapped_batches`), or in `workers` forked
    ones with a few chunks in flight each (never the whole stream queued), the results taken in submission order
    so the file is the same."""
    if workers <= 1:
        yield from _overlapped_batches(chunks, settings)
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
    in `workers` processes (default `SPOOL_WORKERS`, else 1); the file is the same for any number of them.

    Raises:
        ConfigError, DataError: a record the template cannot render.
    """
    import pyarrow as pa

    columns: dict[str, list[np.ndarray]] = {k: [] for k in ("source", "test", "prompt", "response", "answer", "keys",
                                                           "marked", "profile")}
    profiles: dict[tuple[str, str, bool], int] = {}
    batch_rows: list[int] = []
    origins: list[tuple[int, bool]] = []

    def chunks() -> Iterator[list[Record]]:
        for source, from_test_file, records in streams:
            for chunk in _chunks(records, SPOOL_RECORDS):
                origins.append((source, from_test_file))
                yield chunk

    options = pa.ipc.IpcWriteOptions(compression=SPOOL_COMPRESSION)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, _schema(), options=options) as writer:
        settings = (tokenizer, template, tokenization, seed)
        workers = workers or SPOOL_WORKERS or 1
        for index, (batch, prompt, response, answer, keys, marked, kinds) in enumerate(
                _batches(chunks(), settings, workers)):
            source, from_test_file = origins[index]
            writer.write_batch(batch)
            batch_rows.append(batch.num_rows)
            columns["source"].append(np.full(batch.num_rows, source, dtype=np.int32))
            columns["test"].append(np.full(batch.num_rows, from_test_file))
            columns["profile"].append(np.array([profiles.setdefault(k, len(profiles)) for k in kinds], dtype=np.int32))
            for key, values in (("prompt", prompt), ("response", response), ("answer", answer), ("keys", keys),
                                ("marked", marked)):
                columns[key].append(values)
            if progress is not None:
                progress.update(batch.num_rows)
    joined = {k: np.concatenate(v) if v else np.zeros(0, dtype="S32" if k == "keys" else np.int64)
              for k, v in columns.items()}
    return Spool(path, joined["source"], joined["test"].astype(bool), joined["prompt"], joined["response"],
                 joined["answer"], joined["keys"], batch_rows, joined["marked"].astype(bool), joined["profile"],
                 list(profiles))


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


def _lines(strings) -> bytes:
    """The strings of an Arrow string array, each followed by a newline, as one block of bytes, made from the
    array's own buffers (no Python string a record).

    ["ab", "c"] -> b"ab\\nc\\n"
    """
    _, offset_buffer, data_buffer = strings.buffers()
    if not len(strings):
        return b""
    offsets = np.frombuffer(offset_buffer, dtype=np.int32)[strings.offset:strings.offset + len(strings) + 1]
    data = np.frombuffer(data_buffer, dtype=np.uint8)[offsets[0]:offsets[-1]] if data_buffer is not None else \
        np.zeros(0, dtype=np.uint8)
    offsets = offsets - offsets[0]
    out = np.full(len(data) + len(strings), ord("\n"), dtype=np.uint8)
    text = np.ones(len(out), dtype=bool)
    text[offsets[1:] + np.arange(len(strings))] = False
    out[text] = data
    return out.tobytes()


def write_split(folder: Path, name: str, table: SpoolReader, rows: np.ndarray, cuts: Windows) -> None:
    """Rows `rows` of the spool (in that order), truncated, as the `datasets` folder `folder/name` plus
    `folder/name_records.jsonl` with the records in the same order."""
    import pyarrow as pa

    schema = pa.schema([("input_ids", pa.list_(pa.int32())), ("labels", pa.list_(pa.int32()))])
    arrow = folder / name / DATA_FILE
    arrow.parent.mkdir(parents=True)
    with pa.OSFile(str(arrow), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer, \
            (folder / f"{name}_records.jsonl").open("wb") as records:
        for begin in range(0, len(rows), SPOOL_RECORDS):
            part = rows[begin:begin + SPOOL_RECORDS]
            ids, labels, texts = table.cut(part, cuts.start[part], cuts.end[part])
            writer.write_batch(pa.record_batch([ids, labels], schema=schema))
            records.write(_lines(texts))
    _describe_dataset(arrow.parent, schema, len(rows))


DATA_FILE = "data-00000-of-00001.arrow"
"""The one data file of a split's `datasets` folder, named as `Dataset.save_to_disk` names a single shard."""


def _describe_dataset(folder: Path, schema, rows: int) -> None:
    """`state.json` and `dataset_info.json` beside the split's Arrow file, so `datasets.load_from_disk` opens the
    folder as `save_to_disk` would have written it, without that copying the data once more (about a gigabyte a
    million records, a quarter of prepare's writing). Checked by loading it; on any difference from what
    `datasets` expects, `save_to_disk` rewrites the folder after all."""
    import secrets

    from datasets import Dataset, DatasetInfo, Features, load_from_disk

    features = Features.from_arrow_schema(schema)
    DatasetInfo(features=features).write_to_directory(str(folder))
    state = {"_data_files": [{"filename": DATA_FILE}], "_fingerprint": secrets.token_hex(8), "_format_columns": None,
             "_format_kwargs": {}, "_format_type": None, "_output_all_columns": False, "_split": None}
    (folder / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True), encoding="utf-8")
    try:
        loaded = load_from_disk(str(folder))
        readable = loaded.features == features and len(loaded) == rows
    except Exception:  # noqa: BLE001 - whatever datasets does not accept, save_to_disk writes instead
        readable = False
    if not readable:
        aside = folder.with_name(folder.name + ".arrow")
        (folder / DATA_FILE).rename(aside)
        for path in folder.iterdir():
            path.unlink()
        folder.rmdir()
        Dataset.from_file(str(aside)).save_to_disk(str(folder))
        aside.unlink()


def iter_records(table: SpoolReader, rows: np.ndarray) -> Iterator[Record]:
    """The records of spool rows `rows`, in that order, read a chunk at a time."""
    for begin in range(0, len(rows), SPOOL_RECORDS):
        part = table.take(rows[begin:begin + SPOOL_RECORDS]).column("record").to_pylist()
        yield from (record_from_dict(json.loads(line)) for line in part)
