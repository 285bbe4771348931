"""`tunesmith data inspect` end to end on the shipped shape examples, with the tiny model's real tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunesmith.cli import main

SHAPES = Path(__file__).parents[2] / "examples" / "shapes"
EXAMPLES = {"alpaca.jsonl": "alpaca", "qa.csv": "qa", "prompt_completion.json": "prompt_completion",
            "input_output.jsonl": "input_output", "messages.jsonl": "messages", "sharegpt.json": "sharegpt",
            "text.jsonl": "text"}


@pytest.mark.parametrize("name", EXAMPLES)
def test_inspect_prints_shape_and_lengths_and_writes_the_png(name, tiny_model_dir, tmp_path, capsys):
    plot = tmp_path / "lengths.png"
    assert main(["data", "inspect", str(SHAPES / name), "--model", str(tiny_model_dir), "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert f"shape:      {EXAMPLES[name]} (" in out
    for part in ("prompt", "response", "total"):
        assert any(line.split()[:1] == [part] and len(line.split()) == 7 for line in out.splitlines())
    assert "truncation:" in out and "duplicates:" in out
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_default_plot_goes_to_the_current_folder(tiny_model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["data", "inspect", str(SHAPES / "qa.csv"), "--model", str(tiny_model_dir)]) == 0
    assert (tmp_path / "qa_lengths.png").is_file()
    assert "qa_lengths.png" in capsys.readouterr().out


def test_broken_file_exits_nonzero_listing_every_record_and_the_stats_without_traceback(tiny_model_dir, capsys):
    code = main(["data", "inspect", str(SHAPES / "broken.jsonl"), "--model", str(tiny_model_dir), "--no-plot"])
    captured = capsys.readouterr()
    assert code == 1
    assert "Traceback" not in captured.err + captured.out
    assert captured.err.startswith("error: 9 of 12 records are invalid") and "--on-error skip" in captured.err
    for line in (2, 3, 4, 5, 7, 8, 9, 10, 11):
        assert f"broken.jsonl:{line}" in captured.out
    assert "3 records (9 invalid of 12" in captured.out and "truncation:" in captured.out  # the valid ones' stats
    assert "training stops: 9 of 12 records (75.0%) is more than the 1%" in captured.out


def test_skip_prints_the_skipped_count(tiny_model_dir, capsys):
    code = main(["data", "inspect", str(SHAPES / "broken.jsonl"), "--model", str(tiny_model_dir), "--no-plot",
                 "--on-error", "skip"])
    out = capsys.readouterr().out
    assert code == 0
    assert "3 records" in out and "skipped: 9 invalid records" in out


def test_json_output_and_explicit_keys(tiny_model_dir, tmp_path, capsys):
    path = tmp_path / "custom.jsonl"
    rows = [{"q": f"Question {i}?", "a": f"Answer {i}.", "note": "x"} for i in range(5)]
    rows.append({"q": "### Question: baked?\n### Answer:", "a": "yes"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["data", "inspect", str(path), "--model", str(tiny_model_dir), "--no-plot", "--json",
                 "--prompt-key", "q", "--response-key", "a", "--max-length", "16"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["stats"]["num_records"] == 6
    assert result["stats"]["truncation"]["max_length"] == 16
    assert result["stats"]["baked_templates"]["records"] == 1
    assert "q/a keys" in result["reason"]


def test_bad_shape_name_is_one_line_listing_valid_shapes(capsys):
    assert main(["data", "inspect", str(SHAPES / "qa.csv"), "--shape", "llama", "--no-plot"]) == 1
    assert "'sharegpt'" in capsys.readouterr().err


def test_invalid_records_are_grouped_by_kind_with_a_count_of_the_rest(tiny_model_dir, tmp_path, capsys):
    rows = [{"question": f"Question {i}?", "answer": f"Answer {i}."} for i in range(900)]
    for line in (10, 20, 30, 40, 50, 60, 70, 80):
        rows[line - 1] = {"question": f"Question {line}?", "answer": " "}
    path = tmp_path / "dirty.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "{oops\n")
    assert main(["data", "inspect", str(path), "--model", str(tiny_model_dir), "--no-plot"]) == 1
    out = capsys.readouterr().out
    stats_at, invalid_at = out.index("truncation:"), out.index("invalid records: 9 of 901 (1.0%), by kind:")
    assert stats_at < invalid_at
    lines = out[invalid_at:].splitlines()
    assert lines[1].split() == ["8", "x", "answer:", "empty;", "expected", "the", "answer", "text"]
    assert [line.strip() for line in lines[2:6]] == [f"{path}:10", f"{path}:20", f"{path}:30", "... and 5 more"]
    assert "1 x invalid JSON" in lines[6] and lines[7].strip() == f"{path}:901"
    assert lines[8].startswith("training skips 9 of 901 records (1.0%)")
    assert main(["data", "inspect", str(path), "--model", str(tiny_model_dir), "--no-plot", "--on-error", "skip"]) == 0
    assert "skipped: 9 invalid records of 901" in capsys.readouterr().out


def test_inspect_flag_defaults_come_from_the_schema():
    import argparse

    from tunesmith.cli import build_parser
    from tunesmith.config import DataConfig, ModelConfig, TemplateConfig, TokenizationConfig

    args = build_parser().parse_args(["data", "inspect", "f.jsonl"])
    assert isinstance(args, argparse.Namespace)
    assert args.on_error == DataConfig().on_error == "auto" and args.shape == DataConfig().shape
    assert args.strip_template == str(DataConfig().strip_template).lower()
    assert (args.model, args.template, args.max_length) == (ModelConfig().name, TemplateConfig().name,
                                                             TokenizationConfig().max_length)
