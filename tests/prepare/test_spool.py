"""The spool read back: windows cut straight from its record batches, the split folders `datasets` loads, and how
many processes tokenize."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from tunesmith.config import TemplateConfig, TokenizationConfig
from tunesmith.data import Record
from tunesmith.prepare import spool

RECORDS = [Record("f", i, "qa", prompt=f"Question {i}: " + "word " * (i % 4), response=f"Answer {i}.")
           for i in range(1, 12)]


@pytest.fixture
def written(tmp_path, tokenizer, monkeypatch):
    """A spool of 11 records in batches of 3 (several batches, the last one short), and its rows as lists."""
    monkeypatch.setattr(spool, "SPOOL_RECORDS", 3)
    result = spool.write_spool(tmp_path / "spool.arrow", [(0, False, iter(RECORDS))], tokenizer,
                               TemplateConfig(name="chat"), TokenizationConfig(), seed=0, workers=1)
    table = pa.ipc.open_file(str(tmp_path / "spool.arrow")).read_all()
    return result, {key: table.column(key).to_pylist() for key in ("input_ids", "labels", "record")}


def test_cut_rows_are_the_rows_windows_in_the_order_asked(written):
    """Rows from several batches, out of order, each cut to its own window: the ids, labels and records of exactly
    those rows, in that order."""
    result, lists = written
    rows = np.array([7, 0, 10, 3, 4, 9, 1])
    lengths = np.array([len(lists["input_ids"][r]) for r in rows])
    start = lengths // 3
    end = lengths - lengths // 5
    ids, labels, records = result.table().cut(rows, start, end)
    assert ids.to_pylist() == [lists["input_ids"][r][s:e] for r, s, e in zip(rows, start, end)]
    assert labels.to_pylist() == [lists["labels"][r][s:e] for r, s, e in zip(rows, start, end)]
    assert records.to_pylist() == [lists["record"][r] for r in rows]


def test_a_split_is_a_datasets_folder_and_its_records_file(written, tmp_path):
    from datasets import load_from_disk

    result, lists = written
    rows = np.array([2, 5, 8, 1])
    totals = result.totals[rows]
    cuts = spool.Windows(np.zeros(len(result.totals), dtype=np.int64), result.totals.copy(), result.totals.copy())
    spool.write_split(tmp_path, "train", result.table(), rows, cuts)
    loaded = load_from_disk(str(tmp_path / "train"))
    assert loaded["input_ids"] == [lists["input_ids"][r] for r in rows]
    assert loaded["labels"] == [lists["labels"][r] for r in rows]
    assert [len(x) for x in loaded["input_ids"]] == totals.tolist()
    lines = (tmp_path / "train_records.jsonl").read_text(encoding="utf-8").splitlines()
    assert lines == [lists["record"][r] for r in rows] and all(json.loads(line) for line in lines)


def test_a_folder_datasets_would_not_load_is_written_by_save_to_disk(written, tmp_path, monkeypatch):
    """Should a `datasets` version expect another layout, the split is written by `save_to_disk` after all."""
    import datasets

    result, lists = written
    cuts = spool.Windows(np.zeros(len(result.totals), dtype=np.int64), result.totals.copy(), result.totals.copy())

    def refuse(path):
        raise FileNotFoundError(path)

    with monkeypatch.context() as patched:
        patched.setattr(datasets, "load_from_disk", refuse)
        spool.write_split(tmp_path, "test", result.table(), np.array([4, 0]), cuts)
    loaded = datasets.load_from_disk(str(tmp_path / "test"))
    assert loaded["input_ids"] == [lists["input_ids"][4], lists["input_ids"][0]]
    assert not (tmp_path / "test.arrow").exists()


def test_records_become_lines():
    assert spool._lines(pa.array(["xyz", "ab", "c"]).slice(1)) == b"ab\nc\n"
    assert spool._lines(pa.array(["", "é"])) == "\né\n".encode()
    assert spool._lines(pa.array([], type=pa.string())) == b""


def test_worker_processes_come_with_records_and_cores(monkeypatch):
    monkeypatch.setattr(spool, "SPOOL_WORKERS", None)
    monkeypatch.setattr(spool.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5, 6, 7}, raising=False)
    assert spool.spool_workers(spool.WORKERS_FROM_RECORDS - 1) == 1
    assert spool.spool_workers(1_000_000) == spool.MAX_SPOOL_WORKERS
    monkeypatch.setattr(spool.os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert spool.spool_workers(1_000_000) == 1
    monkeypatch.setattr(spool, "SPOOL_WORKERS", 2)
    assert spool.spool_workers(10) == 2
