"""The runs table of `tunesmith runs list` and `runs compare`: one row per run folder, from its results files.

Kept apart from the HTML report because it is plain text for the terminal and reads only the summaries
(config, train summary, eval metrics), never the predictions or the prepared data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from tunesmith.report.results import METRIC_SHORT, fmt, read_config, read_json
from tunesmith.runs import RunPaths, is_run_folder

__all__ = ["find_runs", "format_table", "run_row", "run_table"]


def run_row(paths: RunPaths) -> dict:
    """One run's line in `runs list` / `runs compare`: data, model, method, key settings, time, loss, metrics."""
    config = read_config(paths)
    training, data = config.get("training") or {}, config.get("data") or {}
    summary = read_json(paths.train_summary) or {}
    eval_metrics = read_json(paths.eval_dir / "metrics.json") or {}
    models = eval_metrics.get("models") or {}
    tuned = models.get("finetuned") or models.get("model") or {}
    lr = summary.get("learning_rate") or training.get("learning_rate")
    row = {
        "run": paths.root.name,
        "data": Path(str(data.get("path"))).name if data.get("path") else None,
        "model": Path(str((config.get("model") or {}).get("name"))).name if config.get("model") else None,
        "method": training.get("method"),
        "lr": f"{lr:.1e}" if isinstance(lr, (int, float)) else None,
        "epochs": training.get("epochs") if not training.get("max_steps") else f"{training['max_steps']} steps",
        "lora_r": training.get("lora_r") if training.get("method") in ("lora", "qlora") else None,
        "train_s": summary.get("time_s"),
        "test_loss": tuned.get("loss", summary.get("final_test_loss")),
        "base_loss": (models.get("base") or {}).get("loss"),
    }
    for name, short in METRIC_SHORT.items():
        row[short] = (tuned.get("metrics") or {}).get(name, {}).get("mean")
    return row


def find_runs(runs_dir: str | Path) -> list[RunPaths]:
    """Every run folder (`tunesmith.runs.is_run_folder`) directly under runs_dir, oldest first."""
    folder = Path(runs_dir)
    if not folder.is_dir():
        return []
    found = [RunPaths(p) for p in folder.iterdir() if p.is_dir() and is_run_folder(p)]
    return sorted(found, key=lambda p: (p.config.stat().st_mtime, p.root.name))


def run_table(runs: Sequence[RunPaths]) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of formatted cells, one row per run; columns every run lacks are left out."""
    rows = [run_row(p) for p in runs]
    columns = [c for c in (rows[0] if rows else {}) if c == "run" or any(r.get(c) is not None for r in rows)]
    cells = [[fmt(r.get(c), 4 if c.endswith("loss") else 2) for c in columns] for r in rows]
    return columns, cells


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Plain aligned text (numbers right-aligned), for the terminal.

    >>> print(format_table(["run", "loss"], [["a", "1.5"], ["bb", "10.25"]]))
    run   loss
    a      1.5
    bb   10.25
    """
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows)]
    numeric = [bool(rows) and all(_is_number(r[i]) for r in rows) for i in range(len(header))]

    def line(cells):
        return "  ".join((str(c).rjust(w) if num else str(c).ljust(w))
                         for c, w, num in zip(cells, widths, numeric)).rstrip()

    return "\n".join([line(header)] + [line(r) for r in rows])


def _is_number(text: str) -> bool:
    try:
        float(str(text).replace(",", ""))
    except ValueError:
        return text == "-"
    return True
