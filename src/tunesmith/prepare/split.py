"""The train/test split: deterministic across runs and machines, and disjoint by prompt.

Records are grouped by `data.prompt_key` (an exact-duplicate prompt is one group), and groups are ordered by a
SHA-256 of the seed and the key (`group_key`: 32 bytes a record, so a million-record split needs 32 MB), never
Python's `hash()` (salted per process). The test side takes groups in that order until it holds the asked number
of records, so the same file and seed always give the same split, and a prompt that appears twice is never on
both sides.
"""

from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np

from tunesmith.config import SplitConfig
from tunesmith.data import Record, prompt_key
from tunesmith.errors import ConfigError

__all__ = ["group_key", "split_records", "test_count", "test_mask"]


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


def group_key(record: Record, seed: int) -> bytes:
    """The record's place in the split order: SHA-256 of the seed and its prompt (equal prompts, equal keys)."""
    return hashlib.sha256(f"{seed}\0{prompt_key(record)}".encode("utf-8")).digest()


def test_mask(keys: np.ndarray, test_size: float | int) -> np.ndarray:
    """Which records go to the test side, from their `group_key`s (an array of 32-byte strings, file order).

    Groups (equal keys) are taken in key order until the test side holds the asked count; a group that would
    overshoot is skipped, so the test side holds that count whenever it can; when every group overshoots, the
    smallest (first in the file among equals) goes.

    Raises:
        ConfigError: the test side would take every record.
    """
    wanted = test_count(len(keys), test_size)
    groups, first, inverse, sizes = np.unique(keys, return_index=True, return_inverse=True, return_counts=True)
    chosen = np.zeros(len(groups), dtype=bool)
    taken = 0
    for group, size in enumerate(sizes.tolist()):  # np.unique sorts the keys: the split order
        if taken >= wanted:
            break
        if taken + size <= wanted:
            chosen[group] = True
            taken += size
    if wanted and not taken:
        smallest = np.flatnonzero(sizes == sizes.min())
        chosen[smallest[np.argmin(first[smallest])]] = True
    mask = chosen[inverse.reshape(-1)]
    if len(keys) and mask.all():
        raise ConfigError(f"split.test_size={test_size!r}: every prompt group landed in the test split "
                          f"(the data has {len(groups)} distinct prompts); use a smaller test_size")
    return mask


def split_records(records: Sequence[Record], split: SplitConfig) -> tuple[list[Record], list[Record]]:
    """(train, test), each in file order; a prompt's duplicates all go to the same side.

    10 records, test_size=0.2 -> (8 records, 2 records), the same 2 on every machine for the same seed.

    Raises:
        ConfigError: the test side would take every record.
    """
    keys = np.array([group_key(r, split.seed) for r in records], dtype="S32")
    mask = test_mask(keys, split.test_size)
    return [r for r, t in zip(records, mask) if not t], [r for r, t in zip(records, mask) if t]
