"""The truncation rule on token counts, alone: what survives of an example cut to max_length."""

from __future__ import annotations

import pytest

from tunesmith.data.lengths import kept_window


@pytest.mark.parametrize("total,answer_start,side,window", [
    (15, 10, "left", (0, 15)),     # fits: everything is kept
    (25, 20, "left", (5, 25)),     # only the prompt is cut, from the start
    (40, 10, "left", (0, 20)),     # answer alone too long: the prompt keeps 20 // 2 = 10, the answer 10
    (34, 4, "left", (0, 20)),      # short prompt is kept whole, the answer keeps 16
    (40, 30, "left", (20, 40)),    # a conversation: the last answer fits, earlier turns go
    (25, 20, "right", (0, 20)),    # right cuts the end
    (15, 10, "right", (0, 15)),
])
def test_kept_window(total, answer_start, side, window):
    assert kept_window(total, answer_start, 20, side) == window


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("total", [1, 19, 20, 21, 64])
def test_window_is_never_longer_than_max_length_and_inside_the_example(side, total):
    for answer_start in range(total):
        start, end = kept_window(total, answer_start, 20, side)
        assert 0 <= start <= end <= total and end - start == min(total, 20)
