"""Results files of a finished, evaluated run, written by hand: what every report view reads."""

from __future__ import annotations

import json

import pytest

from tunesmith.config import load_config
from tunesmith.report.results import METRIC_LABELS
from tunesmith.runs import RunPaths, create_run

EVIL = '<script>alert("owned")</script>'


def _metric_block(mean: float) -> dict:
    return {name: {"mean": mean, "low": mean - 5, "high": mean + 5} for name in METRIC_LABELS}


def write_results(paths: RunPaths, n: int = 25) -> None:
    """Every results file a finished, evaluated run has, written by hand."""
    from datasets import Dataset

    (paths.root / "data_stats.json").write_text(json.dumps({
        "num_records": n, "shapes": {"qa": n}, "kinds": {"pair": n},
        "lengths": {part: {"min": 3, "median": 10.0, "p95": 20, "p99": 22, "max": 25, "mean": 11.0}
                    for part in ("prompt", "response", "total")},
        "truncation": None, "duplicates": {"exact": 1, "conflicting_prompts": 0, "near": 2},
        "baked_templates": {"records": 0, "markers": {}, "examples": []}}))
    paths.prepared.mkdir(parents=True)
    (paths.manifest).write_text(json.dumps({"counts": {"records": n, "train": n - 5, "test": 5, "truncated": 0,
                                                       "dropped": 0}, "shape": "qa", "template": "chat",
                                            "max_length": 40}))
    for split, count in (("train", n - 5), ("test", 5)):
        Dataset.from_dict({"input_ids": [[1] * (10 + i) for i in range(count)],
                           "labels": [[-100] * (10 + i) for i in range(count)]}).save_to_disk(paths.prepared / split)
    paths.metrics.write_text("".join(json.dumps({"step": s, "loss": 3.0 / s, "lr": 1e-4,
                                                 **({"test_loss": 3.5 / s} if s % 5 == 0 else {})}) + "\n"
                                     for s in range(1, 21)))
    paths.train_summary.write_text(json.dumps({"method": "lora", "steps": 20, "epochs": 3.0, "learning_rate": 2e-4,
                                               "time_s": 12.5, "final_test_loss": 0.7, "best_test_loss": 0.7}))
    paths.eval_dir.mkdir()
    models = {"base": {"n": n, "loss": 2.5, "perplexity": 12.18, "metrics": _metric_block(20.0),
                       "corpus": {"bleu": 10.0, "chrf": 30.0}, "errors": {"empty": 0.0, "length": 0.4,
                                                                          "repetitive": 0.2}},
              "finetuned": {"n": n, "loss": 0.7, "perplexity": 2.01, "metrics": _metric_block(60.0),
                            "corpus": {"bleu": 40.0, "chrf": 60.0}, "errors": {"empty": 0.04, "length": 0.0,
                                                                               "repetitive": 0.0}}}
    (paths.eval_dir / "metrics.json").write_text(json.dumps({"source": "test_records.jsonl", "n": n,
                                                             "key_fact_recall": KEY_FACTS_NOTE, "models": models}))
    rows = []
    for i in range(n):
        reference = f"Answer number {i} is here {EVAL_WORD}" if i else EVIL
        # finetuned key-fact recall rises with the index and ROUGE-L falls: "worst" tells which one it sorts by
        rows.append({"index": i, "prompt": f"Question {i}? {EVIL}", "reference": reference,
                     "key_words": [EVAL_WORD, str(i)] if i else [],
                     "base": {"output": f"base says {i}", "metrics": {"key_fact_recall": 0.0, "rouge_l": 10.0}},
                     "finetuned": {"output": f"Answer number {i} is there",
                                   "metrics": {"key_fact_recall": float(i * 4), "rouge_l": float(100 - i * 4)}}})
    (paths.eval_dir / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


EVAL_WORD = "exactly"
KEY_FACTS_NOTE = "share of the reference's key words the answer contains"


@pytest.fixture
def run_paths(tmp_path) -> RunPaths:
    config = load_config(base={"data": {"path": "qa.jsonl"},
                               "output": {"runs_dir": str(tmp_path / "runs"), "name": "demo-run"}})
    return create_run(config)


@pytest.fixture
def evaluated_run(run_paths) -> RunPaths:
    """The run folder with every results file an evaluated run has."""
    write_results(run_paths)
    return run_paths
