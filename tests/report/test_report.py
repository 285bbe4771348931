"""The HTML report from hand-written results files: sections, escaping, inlined images, no network, missing
pieces, and a headless Chromium rendering; plus the pure helpers of the runs table."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys

import pytest

from tunesmith.report import html as report
from tunesmith.config import load_config
from tunesmith.runs import RunPaths, create_run

EVIL = '<script>alert("owned")</script>'
SECTIONS = ("config", "data", "training", "metrics", "errors", "worst", "examples")


def _metric_block(mean: float) -> dict:
    return {name: {"mean": mean, "low": mean - 5, "high": mean + 5} for name in report.METRIC_LABELS}


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
                                                             "models": models}))
    rows = []
    for i in range(n):
        reference = f"Answer number {i} is here {EVAL_WORD}" if i else EVIL
        rows.append({"index": i, "prompt": f"Question {i}? {EVIL}", "reference": reference,
                     "base": {"output": f"base says {i}", "metrics": {"rouge_l": 10.0}},
                     "finetuned": {"output": f"Answer number {i} is there", "metrics": {"rouge_l": float(i * 4)}}})
    (paths.eval_dir / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


EVAL_WORD = "exactly"


@pytest.fixture
def run_paths(tmp_path) -> RunPaths:
    config = load_config(base={"data": {"path": "qa.jsonl"},
                               "output": {"runs_dir": str(tmp_path / "runs"), "name": "demo-run"}})
    return create_run(config)


@pytest.fixture
def full_report(run_paths) -> str:
    write_results(run_paths)
    return report.build_report(run_paths).read_text(encoding="utf-8")


def _section(html_text: str, anchor: str) -> str:
    match = re.search(rf'<section id="{anchor}">(.*?)</section>', html_text, re.S)
    assert match, f"section {anchor} missing"
    return match.group(1)


def test_every_section_is_there_and_computed(full_report):
    for anchor in SECTIONS:
        assert "not computed" not in _section(full_report, anchor), anchor
    metrics = _section(full_report, "metrics")
    assert "ROUGE-L" in metrics and "[55.00, 65.00]" in metrics  # the finetuned interval
    assert "hit max_new_tokens without ending" in _section(full_report, "errors")


def test_user_text_is_escaped(full_report):
    assert "<script" not in full_report
    assert "&lt;script&gt;alert(&quot;owned&quot;)&lt;/script&gt;" in full_report


def test_images_are_inlined_pngs_and_nothing_is_fetched(full_report):
    sources = re.findall(r'src="([^"]*)"', full_report)
    assert len(sources) >= 4  # length histogram, loss curves, metric bars, error bars
    for source in sources:
        assert source.startswith("data:image/png;base64,")
        assert base64.b64decode(source.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert not re.search(r"https?://", full_report)
    assert "<link" not in full_report and "@import" not in full_report


def test_worst_examples_are_the_lowest_rouge_l(full_report):
    worst = _section(full_report, "worst")
    shown = [int(i) for i in re.findall(r"<tr><td>(\d+)</td>", worst)]
    assert shown == list(range(report.WORST_SHOWN))  # finetuned ROUGE-L is 4 * index
    every = _section(full_report, "examples")
    assert len(re.findall(r"<tr><td>\d+</td>", every)) == 25


def test_word_differences_are_marked(full_report):
    # reference "... is here exactly" vs finetuned "... is there": "here exactly" missing, "there" added
    assert "<del>here exactly</del> <ins>there</ins>" in _section(full_report, "examples")
    assert str(report.word_diff("a b c", "a x c")) == "a <del>b</del> <ins>x</ins> c"
    assert str(report.word_diff("<b>", "<i>")) == "<del>&lt;b&gt;</del> <ins>&lt;i&gt;</ins>"


def test_missing_results_show_as_not_computed(run_paths):
    html_text = report.build_report(run_paths).read_text(encoding="utf-8")
    for anchor in ("data", "training", "metrics", "errors", "worst", "examples"):
        assert "not computed" in _section(html_text, anchor), anchor
    assert "demo-run" in _section(html_text, "config")


def test_report_never_imports_torch(run_paths):
    write_results(run_paths)
    code = ("import sys; from pathlib import Path; from tunesmith.report.html import build_report; "
            "from tunesmith.runs import RunPaths; build_report(RunPaths(Path(sys.argv[1]))); "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code, str(run_paths.root)], check=True)


def test_out_path_and_atomic_write(run_paths, tmp_path):
    out = report.build_report(run_paths, tmp_path / "elsewhere" / "r.html")
    assert out.is_file() and not run_paths.report.exists()
    assert not list(out.parent.glob(".*.tmp"))


def test_run_table_and_format(run_paths, tmp_path):
    write_results(run_paths)
    header, rows = report.run_table([run_paths])
    row = dict(zip(header, rows[0]))
    assert row["run"] == "demo-run" and row["method"] == "lora" and row["test_loss"] == "0.7000"
    assert row["ROUGE-L"] == "60.00" and row["train_s"] == "12.50"
    text = report.format_table(header, rows)
    assert text.splitlines()[0].split()[0] == "run" and "demo-run" in text


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")
def test_report_renders_in_headless_chromium(full_report, run_paths, tmp_path):
    import numpy as np
    from PIL import Image

    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'chrome'}"]
    url = run_paths.report.resolve().as_uri()
    shot = tmp_path / "report.png"
    # one browser start gives both: the screenshot file and the DOM after rendering on stdout
    dom = subprocess.run(flags + [f"--screenshot={shot}", "--dump-dom", "--window-size=1280,4000", url], check=True,
                         timeout=120, capture_output=True, text=True).stdout
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[:2] == (4000, 1280)
    assert (pixels.reshape(-1, 3) != 255).any(axis=1).mean() > 0.02  # far from blank
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # text, tables and charts, not one colour
    # the charts' blue (#4c72b0) is on screen, so the inlined images were decoded and drawn
    assert (np.abs(pixels.astype(int) - [76, 114, 176]).sum(axis=2) < 30).sum() > 5000
    for anchor in SECTIONS:
        assert f'<section id="{anchor}">' in dom
    assert dom.count("<img") >= 4 and "Metrics: base vs finetuned" in dom


def test_multiple_choice_results_get_a_section(run_paths):
    write_results(run_paths)
    tuned = {"acc": {"mean": 0.75, "low": 0.5, "high": 1.0}, "acc_norm": {"mean": 0.5, "low": 0.25, "high": 0.75}}
    (run_paths.eval_dir / "mc-arc_easy.json").write_text(json.dumps(
        {"source": "data/arc_easy.jsonl", "n": 4, "models": {"finetuned": tuned}}))
    html_text = report.build_report(run_paths).read_text(encoding="utf-8")
    choices = _section(html_text, "choices")
    assert "arc_easy.jsonl" in choices and "0.75 <span" in choices and 'href="#choices"' in html_text
