"""The train/test split: deterministic, sized as asked, disjoint by prompt."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tunesmith.config import SplitConfig
from tunesmith.data import Record, prompt_key
from tunesmith.errors import ConfigError
from tunesmith.prepare.split import split_records


def records(n: int, duplicates_every: int = 0) -> list[Record]:
    """n records; with `duplicates_every`, every k-th record repeats the previous record's prompt."""
    out = []
    for i in range(n):
        q = i - 1 if duplicates_every and i % duplicates_every == 0 and i else i
        out.append(Record("t.jsonl", i + 1, "qa", prompt=f"question {q}", response=f"answer {i}"))
    return out


def lines(rs: list[Record]) -> list[int]:
    return [r.line for r in rs]


def test_identical_across_runs_and_processes():
    data = records(100)
    train, test = split_records(data, SplitConfig(test_size=0.2, seed=7))
    again = split_records(data, SplitConfig(test_size=0.2, seed=7))
    assert (lines(train), lines(test)) == (lines(again[0]), lines(again[1]))
    # A fresh interpreter has another hash() salt; the split must not change.
    code = ("from tunesmith.config import SplitConfig; from tunesmith.data import Record; "
            "from tunesmith.prepare.split import split_records; "
            "data = [Record('t.jsonl', i + 1, 'qa', prompt=f'question {i}', response=f'answer {i}') "
            "for i in range(100)]; "
            "print([r.line for r in split_records(data, SplitConfig(test_size=0.2, seed=7))[1]])")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": "12345"})
    assert other.stdout.strip() == str(lines(test))


def test_seed_changes_the_split_and_order_is_kept():
    data = records(100)
    _, a = split_records(data, SplitConfig(test_size=0.2, seed=1))
    _, b = split_records(data, SplitConfig(test_size=0.2, seed=2))
    assert lines(a) != lines(b)
    assert lines(a) == sorted(lines(a))


def test_duplicate_prompts_never_land_on_both_sides():
    data = records(300, duplicates_every=3)
    train, test = split_records(data, SplitConfig(test_size=0.25, seed=0))
    assert {prompt_key(r) for r in train}.isdisjoint({prompt_key(r) for r in test})
    assert len(train) + len(test) == 300
    assert abs(len(test) - 75) <= 1


@pytest.mark.parametrize(("test_size", "expected"), [(0.1, 20), (0.25, 50), (30, 30), (1, 1), (0, 0)])
def test_fraction_or_count(test_size, expected):
    train, test = split_records(records(200), SplitConfig(test_size=test_size))
    assert len(test) == expected and len(train) == 200 - expected


def test_a_count_that_takes_everything_is_an_error():
    with pytest.raises(ConfigError, match=r"split.test_size=10: the data has 10 records"):
        split_records(records(10), SplitConfig(test_size=10))
