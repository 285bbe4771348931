"""`tunesmith eval`, `report`, `runs list` and `runs compare` from the command line."""

from __future__ import annotations

import json

import pytest

from tunesmith.cli import main
from tunesmith.cli.evaluate import format_metrics
from tunesmith.config import load_config
from tunesmith.runs import create_run


def _fake_run(runs_dir, name: str, method: str, rouge: float, loss: float):
    config = load_config(base={"data": {"path": "support.jsonl"}, "training": {"method": method},
                               "output": {"runs_dir": str(runs_dir), "name": name}})
    paths = create_run(config)
    paths.train_summary.write_text(json.dumps({"time_s": 30.0, "learning_rate": 2e-4, "final_test_loss": loss}))
    metrics = {name: {"mean": rouge, "low": rouge - 1, "high": rouge + 1}
               for name in ("exact_match", "exact_match_normalized", "token_f1", "rouge_l", "bleu", "chrf")}
    paths.eval_dir.mkdir()
    (paths.eval_dir / "metrics.json").write_text(json.dumps(
        {"models": {"base": {"loss": 3.0}, "finetuned": {"loss": loss, "metrics": metrics}}}))
    return paths


def test_runs_compare_prints_one_line_per_run(tmp_path, capsys):
    a = _fake_run(tmp_path / "runs", "lora-run", "lora", 41.5, 0.9)
    b = _fake_run(tmp_path / "runs", "full-run", "full", 55.25, 0.6)
    assert main(["runs", "compare", str(a.root), str(b.root)]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = lines[0].split()
    assert header[:4] == ["run", "data", "model", "method"] and "test_loss" in header and "ROUGE-L" in header
    rows = {line.split()[0]: dict(zip(header, line.split())) for line in lines[1:]}
    assert rows["lora-run"]["method"] == "lora" and rows["full-run"]["method"] == "full"
    assert rows["lora-run"]["ROUGE-L"] == "41.50" and rows["full-run"]["test_loss"] == "0.6000"
    assert rows["full-run"]["data"] == "support.jsonl" and rows["lora-run"]["lora_r"] == "16"


def test_runs_list_finds_every_run(tmp_path, capsys):
    _fake_run(tmp_path / "runs", "one", "lora", 10.0, 1.0)
    _fake_run(tmp_path / "runs", "two", "lora", 20.0, 0.8)
    (tmp_path / "runs" / "not-a-run").mkdir()
    assert main(["runs", "list", "--runs-dir", str(tmp_path / "runs")]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]]
    assert sorted(names) == ["one", "two"]
    assert main(["runs", "list", "--runs-dir", str(tmp_path / "empty")]) == 0
    assert "no runs" in capsys.readouterr().out


def test_compare_of_a_non_run_is_one_line_error(tmp_path, capsys):
    assert main(["runs", "compare", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and "not a run folder" in err and "Traceback" not in err


def test_report_command_writes_the_file(tmp_path, capsys):
    paths = _fake_run(tmp_path / "runs", "r", "lora", 30.0, 1.0)
    assert main(["report", str(paths.root)]) == 0
    assert str(paths.report) in capsys.readouterr().out
    assert "ROUGE-L" in paths.report.read_text()


def test_eval_of_a_plain_model_on_a_data_file_prints_metrics(tiny_model_dir, tmp_path, capsys):
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps({"question": f"What is {i}+{i}?", "answer": f"It is {2 * i}."}) + "\n"
                            for i in range(5)))
    code = main(["eval", str(tiny_model_dir), "--data", str(data), "--limit", "3", "--max-new-tokens", "3"])
    assert code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"3 examples from {data}")
    table = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert {"metric", "test", "perplexity", "EM", "F1", "ROUGE-L", "BLEU", "chrF", "empty", "length"} <= set(table)
    assert table["metric"].split() == ["metric", "model"]
    assert out.splitlines()[2].split()[0] == "key_facts"  # the content metric leads the table
    assert float(table["test"].split()[-1]) > 0  # "test loss  10.8..."


@pytest.mark.parametrize("extra, message", [([], "--data"), (["--model", "base", "--data", "x.jsonl"], "plain model")])
def test_eval_mistakes_are_one_line_errors(tiny_model_dir, capsys, extra, message):
    assert main(["eval", str(tiny_model_dir)] + extra) == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err and "Traceback" not in err


def test_multiple_choice_result_formatting():
    result = {"n": 4, "source": "arc.jsonl", "models": {
        "finetuned": {"acc": {"mean": 0.75, "low": 0.5, "high": 1.0},
                      "acc_norm": {"mean": 0.5, "low": 0.0, "high": 1.0}},
        "base": {"acc": {"mean": 0.25, "low": 0.0, "high": 0.75}, "acc_norm": {"mean": 0.25, "low": 0.0, "high": 0.5}}}}
    lines = format_metrics(result).splitlines()
    assert lines[0] == "4 questions from arc.jsonl"
    assert lines[1].split() == ["metric", "base", "finetuned"]
    assert lines[2].split()[:2] == ["acc", "0.2500"] and "0.7500" in lines[2]


def _stats(mean: float) -> dict:
    return {"mean": mean, "low": mean - 1, "high": mean + 1}


def test_eval_summary_leads_with_key_fact_recall():
    names = ("key_fact_recall", "exact_match", "exact_match_normalized", "token_f1", "rouge_l", "bleu", "chrf")
    errors = {"empty": 0.0, "length": 0.0, "repetitive": 0.0}
    tuned = {"loss": 0.1, "perplexity": 1.1, "errors": errors, "metrics": {n: _stats(90.0) for n in names}}
    tuned["metrics"]["key_fact_recall"] = _stats(30.0)
    # the base model was evaluated before key-fact recall existed: its cell reads "-"
    base = {"loss": 2.0, "perplexity": 7.4, "errors": errors, "metrics": {n: _stats(20.0) for n in names[1:]}}
    lines = format_metrics({"n": 45, "source": "test", "models": {"finetuned": tuned, "base": base}}).splitlines()
    assert lines[1].split() == ["metric", "base", "finetuned"]
    assert lines[2].split() == ["key_facts", "-", "[-,", "-]", "30.00", "[29.00,", "31.00]"]
    assert [line.split()[0] for line in lines[3:6]] == ["test", "perplexity", "EM"]


def test_pipeline_summary_leads_with_key_fact_recall(capsys):
    from pathlib import Path

    from tunesmith.api import PipelineResult
    from tunesmith.cli.pipeline import _print_pipeline

    result = PipelineResult(run=Path("runs/demo"), model=Path("runs/demo/model"), report=Path("runs/demo/r.html"),
                            test_loss=0.11, base_test_loss=2.5, metrics={},
                            headline_metrics={"key_fact_recall": (5.0, 31.0), "rouge_l": (22.4, 92.6)})
    _print_pipeline(result)
    lines = [line for line in capsys.readouterr().out.splitlines() if line]
    assert [line.split(":")[0] for line in lines[3:]] == ["key_fact_recall", "test loss", "rouge_l"]
    assert lines[3].split(":", 1)[1].split() == ["base", "5.0", "->", "finetuned", "31.0", "(0-100)"]
