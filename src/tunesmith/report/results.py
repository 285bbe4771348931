"""Reading a run's results files, and the names and number formats every view of them shares.

The HTML page (`report.html`), its charts (`report.charts`) and the runs table (`report.runs_table`) all read
the same files and label the same metrics; this module is the one place for that, below all three, so they never
import each other for it. A missing or broken file reads as None (or empty): the views show "not computed",
never fail, so a report can be built at any point of a run.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from tunesmith.runs import RunPaths

__all__ = ["GRADES", "UNKNOWN", "METRIC_LABELS", "METRIC_SHORT", "MODEL_ORDER", "fmt", "ordered_models", "read_config", "read_json",
           "token_lengths"]

METRIC_LABELS = {
    "key_fact_recall": "key-fact recall",
    "exact_match": "exact match",
    "exact_match_normalized": "exact match (normalized)",
    "token_f1": "token F1",
    "rouge_l": "ROUGE-L",
    "bleu": "BLEU",
    "chrf": "chrF",
}
"""Generation metrics in table order, with the names people know them by. Key-fact recall leads: the others
reward wording every answer shares, so they stay high when the facts are wrong."""

METRIC_SHORT = {"key_fact_recall": "key_facts", "exact_match": "EM", "exact_match_normalized": "EM_norm",
                "token_f1": "F1", "rouge_l": "ROUGE-L", "bleu": "BLEU", "chrf": "chrF"}
"""Column names for terminal tables."""

GRADES = ("correct", "partly", "wrong", "unknown")
"""The judge's grades as result files write them (`evaluate.judge`), in table order; unknown: no usable verdict."""
UNKNOWN = "unknown"

MODEL_ORDER = ("base", "finetuned", "model")
"""Models shown first, in this order, wherever models stand side by side."""


def read_json(path: Path) -> dict | None:
    """A JSON results file, or None when it is missing or unreadable (the report shows "not computed")."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_config(paths: RunPaths) -> dict:
    """config.yaml as plain data ({} when missing or broken): the report shows what was saved, as saved."""
    try:
        data = yaml.safe_load(paths.config.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def token_lengths(paths: RunPaths) -> list[int]:
    """Tokens per prepared example (train and test), for the length histogram; [] when not prepared."""
    lengths = []
    for split in ("train", "test"):
        folder = paths.prepared / split
        if not (folder / "dataset_info.json").is_file():
            continue
        from datasets import load_from_disk

        try:
            lengths += [len(ids) for ids in load_from_disk(str(folder))["input_ids"]]
        except (OSError, ValueError, KeyError):
            continue
    return lengths


def ordered_models(models: dict) -> list[str]:
    """Model labels base, finetuned first, then anything else.

    >>> ordered_models({"finetuned": {}, "base": {}})
    ['base', 'finetuned']
    """
    return [m for m in MODEL_ORDER if m in models] + sorted(m for m in models if m not in MODEL_ORDER)


def fmt(value, digits: int = 2) -> str:
    """Numbers for tables: fixed decimals, thousands separators for integers, "-" for nothing.

    >>> fmt(3.14159), fmt(12000), fmt(None)
    ('3.14', '12,000', '-')
    """
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.{digits}f}" if abs(value) < 1e6 else f"{value:.3g}"
    return str(value)
