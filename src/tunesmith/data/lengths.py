"""The truncation rule, on token counts: which tokens of an example survive a cut to `max_length`.

Written once, here, because two stages need it: `tunesmith.prepare.tokenization` cuts real examples with it,
and `tunesmith.data.stats` predicts from lengths alone what the cut would cost (`data inspect`), so the
prediction is always the rule that is applied.

- `left` (default): tokens are cut from the start, so the last answer survives whole when it fits. When the
  last answer alone is longer than `max_length`, the example keeps the end of what comes before it (at most half
  of `max_length`) so the model still sees what it answers, then as much of the answer as fits.
- `right`: tokens are cut from the end (the answer's tail first).
"""

from __future__ import annotations

__all__ = ["kept_window"]


def kept_window(total: int, answer_start: int, max_length: int, truncation_side: str = "left") -> tuple[int, int]:
    """[start, end) of the tokens kept of an example of `total` tokens whose last answer starts at `answer_start`.

    >>> kept_window(10, 6, max_length=12)        # fits: everything
    (0, 10)
    >>> kept_window(30, 20, max_length=12)       # the answer fits: the last 12 tokens
    (18, 30)
    >>> kept_window(30, 10, max_length=12)       # it does not: 6 tokens before the answer, 6 of the answer
    (4, 16)
    >>> kept_window(30, 10, max_length=12, truncation_side="right")
    (0, 12)
    """
    if total <= max_length:
        return 0, total
    if truncation_side == "right":
        return 0, max_length
    if total - answer_start <= max_length:
        return total - max_length, total
    start = answer_start - min(answer_start, max_length // 2)
    return start, start + max_length
