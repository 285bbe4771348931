"""The train/test split: deterministic across runs and machines, and disjoint by prompt.

Records are grouped by `data.prompt_key` (an exact-duplicate prompt is one group), and groups are ordered by a
SHA-256 of the seed and the key, never Python's `hash()` (salted per process). The test side takes groups in
that order until it holds the asked number of records, so the same file and seed always give the same split,
and a prompt that appears twice is never on both sides.
"""

from __future__ import annotations

import hashlib
from typing import Sequence

from tunesmith.config import SplitConfig
from tunesmith.data import Record, prompt_key
from tunesmith.errors import ConfigError

__all__ = ["split_records", "test_count"]


def test_count(total: int, test_size: float | int) -> int:
    """How many records the test side should hold: a fraction of `total` (at least one) or a count.

    >>> test_count(200, 0.1), test_count(5, 0.1), test_count(200, 30)
    (20, 1, 30)

    Raises:
        ConfigError: the test side would take every record, leaving nothing to train on.
    """
    if isinstance(test_size, float):
        wanted = max(1, round(total * test_size)) if total > 1 else 0
    else:
        wanted = test_size
    if wanted >= total and wanted > 0:
        raise ConfigError(f"split.test_size={test_size!r}: the data has {total} records, so nothing would be left "
                          f"to train on; use a smaller test_size or a separate data.test_path")
    return wanted


def _group_order(key: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}\0{key}".encode("utf-8")).hexdigest()


def split_records(records: Sequence[Record], split: SplitConfig) -> tuple[list[Record], list[Record]]:
    """(train, test), each in file order; a prompt's duplicates all go to the same side.

    10 records, test_size=0.2 -> (8 records, 2 records), the same 2 on every machine for the same seed.

    Raises:
        ConfigError: the test side would take every record.
    """
    wanted = test_count(len(records), split.test_size)
    groups: dict[str, list[int]] = {}
    for index, record in enumerate(records):
        groups.setdefault(prompt_key(record), []).append(index)
    test: set[int] = set()
    for key in sorted(groups, key=lambda k: _group_order(k, split.seed)):
        if len(test) >= wanted:
            break
        # A group that would overshoot is skipped so the test side holds the asked count whenever it can.
        if len(test) + len(groups[key]) <= wanted:
            test.update(groups[key])
    if wanted and not test:
        test.update(min(groups.values(), key=len))
    if len(test) == len(records):
        raise ConfigError(f"split.test_size={split.test_size!r}: every prompt group landed in the test split "
                          f"(the data has {len(groups)} distinct prompts); use a smaller test_size")
    train = [r for i, r in enumerate(records) if i not in test]
    return train, [r for i, r in enumerate(records) if i in test]
