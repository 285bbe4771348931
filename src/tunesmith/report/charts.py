"""Every chart of tunesmith, as PNG bytes drawn with matplotlib's Agg backend (no display, no torch).

The report inlines them; training writes `loss.png` through `loss_chart`; `data inspect --plot` writes
`length_chart` (the api writes the file: a chart only draws). Returning bytes instead of writing keeps matplotlib
out of every stage below this one.
"""

from __future__ import annotations

import io
from typing import Sequence

from tunesmith.report.results import METRIC_LABELS, ordered_models

__all__ = ["error_chart", "length_chart", "loss_chart", "metric_charts"]


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


def length_chart(lengths: Sequence[int], max_length: int | None, *, truncated: bool = True) -> bytes | None:
    """A histogram of tokens per example with the `max_length` cut-off drawn; None when there are no lengths.

    `truncated=True` (the report): the lengths are of prepared examples, already cut, so none is longer and the
    line alone marks the limit. `truncated=False` (`data inspect`): the lengths are before truncation, so the
    legend says how many examples are longer, which is what choosing `max_length` needs.
    """
    if not lengths:
        return None
    figure = _figure(8, 3.5) if truncated else _figure(7, 4)
    axes = figure.add_subplot()
    axes.hist(lengths, bins=min(50, max(5, len(set(lengths)))), color="#4c72b0")
    if max_length:
        label = f"max_length = {max_length}"
        if not truncated:
            label += f" ({sum(n > max_length for n in lengths)} of {len(lengths)} longer)"
        axes.axvline(max_length, color="#c44e52", linestyle="--", label=label)
        axes.legend()
    if truncated:
        axes.set_xlabel("tokens per prepared example (after templating and truncation)")
    else:
        axes.set_xlabel("tokens per example (prompt + response, after templating)")
    axes.set_ylabel("examples")
    if not truncated:
        axes.set_title(f"Token lengths of {len(lengths)} examples")
    return _png(figure)


def metric_charts(models: dict) -> bytes | None:
    """One bar chart per metric: each model's mean with its 95% interval as an error bar."""
    labels = ordered_models(models)
    names = [n for n in METRIC_LABELS if any(n in models[m].get("metrics", {}) for m in labels)]
    if not names:
        return None
    columns = 3
    rows = -(-len(names) // columns)
    figure = _figure(4 * columns, 3 * rows)
    for i, name in enumerate(names):
        axes = figure.add_subplot(rows, columns, i + 1)
        stats = [models[m].get("metrics", {}).get(name, {}) for m in labels]
        means = [s.get("mean", 0.0) for s in stats]
        errors = [[max(0.0, mean - s.get("low", mean)) for mean, s in zip(means, stats)],
                  [max(0.0, s.get("high", mean) - mean) for mean, s in zip(means, stats)]]
        bars = axes.bar(labels, means, yerr=errors, capsize=6, color=[_color(m) for m in labels])
        axes.bar_label(bars, fmt="%.1f", label_type="center")
        axes.set_title(METRIC_LABELS[name])
        axes.set_ylim(0, max(100.0, max(means) * 1.1))
        axes.grid(axis="y", alpha=0.3)
    return _png(figure)


def error_chart(models: dict) -> bytes | None:
    """Grouped bars: the share of each model's answers in each error category (empty, too long, repetitive)."""
    labels = ordered_models(models)
    categories = sorted({c for m in labels for c in models[m].get("errors", {})})
    if not categories:
        return None
    figure = _figure(7, 3)
    axes = figure.add_subplot()
    width = 0.8 / len(labels)
    for i, label in enumerate(labels):
        shares = [100 * models[label].get("errors", {}).get(c, 0.0) for c in categories]
        axes.bar([x + i * width for x in range(len(categories))], shares, width, label=label, color=_color(label))
    axes.set_xticks([x + width * (len(labels) - 1) / 2 for x in range(len(categories))], categories)
    axes.set_ylabel("% of answers")
    axes.legend()
    return _png(figure)
