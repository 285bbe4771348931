"""Every chart of tunesmith, as PNG bytes drawn with matplotlib's Agg backend (no display, no torch).

The report inlines them; training writes `loss.png` through `loss_chart`; `data inspect --plot` writes
`length_chart`.
"""

from __future__ import annotations

import io
from typing import Sequence


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _color(label: str) -> str:
    return {"base": "#8c8c8c", "finetuned": "#4c72b0"}.get(label, "#55a868")


def loss_chart(metrics: Sequence[dict]) -> bytes | None:
    """Train loss per logged step and test loss per evaluation (from metrics.jsonl)."""
    train = [(m["step"], m["loss"]) for m in metrics if isinstance(m.get("loss"), (int, float))]
    test = [(m["step"], m["test_loss"]) for m in metrics if isinstance(m.get("test_loss"), (int, float))]
    if not train and not test:
        return None
    figure = _figure(8, 4)
    axes = figure.add_subplot()
    if train:
        axes.plot(*zip(*train), label="train loss", linewidth=1)
    if test:
        axes.plot(*zip(*test), "o-", label="test loss")
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("loss per answer token")
    axes.grid(alpha=0.3)
    axes.legend()
    return _png(figure)


def length_chart(lengths: Sequence[int], max_length: int | None) -> bytes | None:
    if not lengths:
        return None
    figure = _figure(8, 3.5)
    axes = figure.add_subplot()
    axes.hist(lengths, bins=min(50, max(5, len(set(lengths)))), color="#4c72b0")
    if max_length:
        axes.axvline(max_length, color="#c44e52", linestyle="--", label=f"max_length = {max_length}")
        axes.legend()
    axes.set_xlabel("tokens per prepared example (after templating and truncation)")
    axes.set_ylabel("examples")
    return _png(figure)
