"""Acceptance (issue 15): a course's question/answer file, one record blank, the `### Question:` template baked into
every prompt, trains with the defaults, and `data inspect` shows the statistics and the bad line together."""

from __future__ import annotations

import json

import pytest

from tunesmith.cli import main
from tunesmith.prepare.manifest import Manifest

RECORDS, BLANK_LINE = 1400, 424


@pytest.fixture
def course_file(tmp_path):
    rows = [{"question": f"### Question:\nWhat does lesson {i} of the course cover?\n\n### Answer:",
             "answer": f"Lesson {i} covers topic number {i}."} for i in range(RECORDS)]
    rows[BLANK_LINE - 1] = {"question": "", "answer": ""}
    path = tmp_path / "course.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_defaults_train_with_one_warning_the_template_stripped_and_the_bad_record_kept(course_file, tmp_path,
                                                                                        tiny_model_dir, capsys):
    config = tmp_path / "course.yaml"
    config.write_text(f"model: {{name: {tiny_model_dir}}}\ndata: {{path: {course_file}}}\nsplit: {{test_size: 4}}\n"
                      f"output: {{runs_dir: {tmp_path / 'runs'}, name: course}}\n"
                      f"training: {{max_steps: 2, precision: fp32}}\n")
    assert main(["train", str(config)]) == 0
    captured = capsys.readouterr()
    printed = captured.out + captured.err
    assert printed.count("warning") == 1
    (warning,) = [line for line in captured.err.splitlines() if line.startswith("warning:")]
    assert "skipped 1 invalid record of 1,400" in warning
    assert f"{course_file}:{BLANK_LINE}: question: empty; expected the prompt text" in captured.err
    assert "stripped the baked-in ### Question: / ### Answer: template from 1,399 of 1,399 prompts" in captured.err

    run = tmp_path / "runs" / "course"
    (rejected,) = [json.loads(line) for line in (run / "rejected.jsonl").read_text().splitlines()]
    assert rejected == {"where": f"{course_file}:{BLANK_LINE}", "reason": "question: empty; expected the prompt text",
                        "record": {"question": "", "answer": ""}}
    records = [json.loads(line) for line in (run / "prepared" / "train_records.jsonl").read_text().splitlines()]
    assert len(records) == 1395 and all(r["prompt"].startswith("What does lesson") for r in records)
    assert not any("###" in r["prompt"] or "###" in r["response"] for r in records)
    assert Manifest.read(run / "prepared" / "manifest.json").stripped_template.form == "qa"


def test_inspect_prints_the_statistics_and_the_invalid_line_together(course_file, tiny_model_dir, capsys):
    assert main(["data", "inspect", str(course_file), "--model", str(tiny_model_dir), "--no-plot"]) == 1
    captured = capsys.readouterr()
    out = captured.out
    assert f"{course_file}: 1,399 records (1 invalid of 1,400, listed at the end)" in out
    assert "truncation:" in out and "duplicates:" in out  # the statistics of the valid ones
    assert "stripped ### Question: / ### Answer: from 1,399 of 1,399 prompts" in out
    assert "  after:  'What does lesson 0 of the course cover?'" in out
    assert "invalid records: 1 of 1,400 (0.1%), by kind:" in out
    assert "1 x question: empty; expected the prompt text" in out and f"{course_file}:{BLANK_LINE}" in out
    assert "training skips 1 of 1,400 records (0.1%): data.on_error: auto (the default)" in out
    assert captured.err.startswith("error: 1 of 1,400 records is invalid") and "--on-error skip" in captured.err
