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


def test_broken_file_exits_nonzero_listing_every_record_without_traceback(tiny_model_dir, capsys):
    code = main(["data", "inspect", str(SHAPES / "broken.jsonl"), "--model", str(tiny_model_dir), "--no-plot"])
    captured = capsys.readouterr()
    assert code == 1
    assert "Traceback" not in captured.err + captured.out
    assert captured.err.startswith("error: 9 data problems:")
    for line in (2, 3, 4, 5, 7, 8, 9, 10, 11):
        assert f"broken.jsonl:{line}:" in captured.err


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
