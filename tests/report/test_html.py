"""The HTML report from hand-written results files (tests/report/conftest.py): sections, escaping, inlined
images, no network, missing pieces, and a headless Chromium rendering."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys

import pytest

from tunesmith.report import html as report

SECTIONS = ("config", "data", "training", "metrics", "errors", "worst", "examples")


@pytest.fixture
def full_report(evaluated_run) -> str:
    return report.build_report(evaluated_run).read_text(encoding="utf-8")


def _section(html_text: str, anchor: str) -> str:
    match = re.search(rf'<section id="{anchor}">(.*?)</section>', html_text, re.S)
    assert match, f"section {anchor} missing"
    return match.group(1)


def test_every_section_is_there_and_computed(full_report):
    for anchor in SECTIONS:
        assert "not computed" not in _section(full_report, anchor), anchor
    metrics = _section(full_report, "metrics")
    assert "ROUGE-L" in metrics and "[55.00, 65.00]" in metrics  # the finetuned interval
    rouge = re.search(r"<tr><td>ROUGE-L</td><td>(.*?)</td><td>(.*?)</td></tr>", metrics)
    assert rouge and rouge.groups() == ('20.00 <span class="ci">[15.00, 25.00]</span>',
                                        '60.00 <span class="ci">[55.00, 65.00]</span>')
    assert "<tr><td>test loss</td><td>2.5000</td><td>0.7000</td></tr>" in metrics
    assert "<tr><td>corpus bleu</td><td>10.00</td><td>40.00</td></tr>" in metrics
    assert "25 test examples from test_records.jsonl" in metrics
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


def test_worst_examples_are_the_fewest_key_facts(full_report):
    worst = _section(full_report, "worst")
    assert "worst examples by key-fact recall (finetuned)" in worst
    shown = [int(i) for i in re.findall(r"<tr><td>(\d+)</td>", worst)]
    assert shown == list(range(report.WORST_SHOWN))  # finetuned key-fact recall is 4 * index (ROUGE-L 100 - that)
    every = _section(full_report, "examples")
    assert len(re.findall(r"<tr><td>\d+</td>", every)) == 25
    assert "key words: exactly, 3" in every and "key-fact recall 12.00 · ROUGE-L 88.00" in every


def test_results_without_key_fact_recall_sort_by_rouge_l(evaluated_run):
    # predictions.jsonl written before key-fact recall existed: the worst are still the least alike
    predictions = evaluated_run.eval_dir / "predictions.jsonl"
    rows = [json.loads(line) for line in predictions.read_text().splitlines()]
    for row in rows:
        for label in ("base", "finetuned"):
            del row[label]["metrics"]["key_fact_recall"]
    predictions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    worst = _section(report.build_report(evaluated_run).read_text(encoding="utf-8"), "worst")
    assert "worst examples by ROUGE-L (finetuned)" in worst
    shown = [int(i) for i in re.findall(r"<tr><td>(\d+)</td>", worst)]
    assert shown == list(range(24, 24 - report.WORST_SHOWN, -1))  # ROUGE-L 100 - 4 * index


def test_key_fact_recall_leads_the_metrics_table(full_report):
    metrics = _section(full_report, "metrics")
    names = re.findall(r"<tr><td>([^<]+)</td>", metrics)
    assert names[:4] == ["key-fact recall", "test loss", "perplexity", "exact match"] and "ROUGE-L" in names
    assert "Key-fact recall is the share of the reference&#x27;s key words the answer contains" in metrics


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


def test_report_never_imports_torch(evaluated_run):
    run_paths = evaluated_run
    code = ("import sys; from pathlib import Path; from tunesmith.report.html import build_report; "
            "from tunesmith.runs import RunPaths; build_report(RunPaths(Path(sys.argv[1]))); "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code, str(run_paths.root)], check=True)


def test_out_path_and_atomic_write(run_paths, tmp_path):
    out = report.build_report(run_paths, tmp_path / "elsewhere" / "r.html")
    assert out.is_file() and not run_paths.report.exists()
    assert not list(out.parent.glob(".*.tmp"))


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


def test_multiple_choice_results_get_a_section(evaluated_run):
    run_paths = evaluated_run
    tuned = {"acc": {"mean": 0.75, "low": 0.5, "high": 1.0}, "acc_norm": {"mean": 0.5, "low": 0.25, "high": 0.75}}
    (run_paths.eval_dir / "mc-arc_easy.json").write_text(json.dumps(
        {"source": "data/arc_easy.jsonl", "n": 4, "models": {"finetuned": tuned}}))
    html_text = report.build_report(run_paths).read_text(encoding="utf-8")
    choices = _section(html_text, "choices")
    assert "arc_easy.jsonl" in choices and "0.75 <span" in choices and 'href="#choices"' in html_text
