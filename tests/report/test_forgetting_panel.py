"""The report's learned/kept panel: test metrics and benchmark accuracy, base -> finetuned, side by side."""

from __future__ import annotations

import json
import re

from tunesmith.report import html as report


def _kept(run_paths, base: float, tuned: float, n: int = 52) -> None:
    models = {label: {"acc": {"mean": acc, "low": acc - 0.1, "high": acc + 0.1},
                      "acc_norm": {"mean": acc - 0.02, "low": acc - 0.12, "high": acc + 0.08}}
              for label, acc in (("base", base), ("finetuned", tuned))}
    change = {name: {"mean": tuned - base, "low": tuned - base - 0.05, "high": tuned - base + 0.05}
              for name in ("acc", "acc_norm")}
    (run_paths.eval_dir / "mc-general_knowledge_mc.json").write_text(json.dumps(
        {"source": "examples/general_knowledge_mc.jsonl", "n": n, "models": models, "change": change}))


def _panel(html_text: str) -> str:
    match = re.search(r'<section id="learned-kept">(.*?)</section>', html_text, re.S)
    assert match, "no learned/kept panel"
    return match.group(1)


def test_learned_and_kept_stand_side_by_side_first(evaluated_run):
    _kept(evaluated_run, base=0.865, tuned=0.8)
    html_text = report.render_report(evaluated_run)
    panel = _panel(html_text)
    learned, kept = panel.split("<h3>Kept: benchmarks</h3>")
    # learned: the conftest's metrics are 20 (base) and 60 (finetuned); the loss falls from 2.5 to 0.7
    assert '<tr><td>key-fact recall</td><td>20.00</td><td>60.00</td><td><span class="up">+40.00</span></td></tr>' \
        in learned
    assert '<td>test loss</td><td>2.5000</td><td>0.7000</td><td><span class="up">-1.8000</span></td>' in learned
    # kept: acc and acc_norm, base -> finetuned, the change in red with its paired interval
    assert ('<tr><td>general_knowledge_mc.jsonl (52 q)</td><td>acc</td><td>0.865</td><td>0.800</td>'
            '<td><span class="down">-0.065</span> <span class="ci">[-0.115, -0.015]</span></td></tr>') in kept
    assert "<td>acc_norm</td><td>0.845</td><td>0.780</td>" in kept
    assert html_text.index('id="learned-kept"') < html_text.index('id="config"')
    assert 'href="#learned-kept"' in html_text
    # a benchmark in the panel is not listed again in the multiple-choice section
    assert 'id="choices"' not in html_text and 'href="#choices"' not in html_text


def test_without_benchmarks_the_panel_says_how_to_get_them(evaluated_run):
    panel = _panel(report.render_report(evaluated_run))
    assert "+40.00" in panel and "eval.benchmarks" in panel


def test_no_panel_before_anything_is_evaluated(run_paths):
    html_text = report.render_report(run_paths)
    assert 'id="learned-kept"' not in html_text and 'href="#learned-kept"' not in html_text


def test_judged_correct_share_is_part_of_what_was_learned(evaluated_run):
    metrics_file = evaluated_run.eval_dir / "metrics.json"
    metrics = json.loads(metrics_file.read_text())
    for label, correct in (("base", 0.1), ("finetuned", 0.75)):
        metrics["models"][label]["judge"] = {"correct": correct, "partly": 0.2, "wrong": 0.8 - correct,
                                             "unknown": 0.0, "n": 25}
    metrics["judge"] = {"name": "judge-model @ http://127.0.0.1:9/v1/chat/completions"}
    metrics_file.write_text(json.dumps(metrics))
    html_text = report.render_report(evaluated_run)
    assert ('<td>judged correct %</td><td>10.0%</td><td>75.0%</td><td><span class="up">+65.0</span></td>'
            in _panel(html_text))
    assert "graded correct / partly / wrong against its reference by judge-model @ http://127.0.0.1:9" in html_text
