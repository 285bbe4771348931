"""The runs table of `runs list` / `runs compare`, from hand-written results files (tests/report/conftest.py)."""

from __future__ import annotations

from tunesmith.report.runs_table import find_runs, format_table, run_table


def test_run_table_and_format(evaluated_run):
    header, rows = run_table([evaluated_run])
    row = dict(zip(header, rows[0]))
    assert row["run"] == "demo-run" and row["method"] == "lora" and row["test_loss"] == "0.7000"
    assert row["ROUGE-L"] == "60.00" and row["train_s"] == "12.50"
    text = format_table(header, rows)
    assert text.splitlines()[0].split()[0] == "run" and "demo-run" in text


def test_find_runs_takes_run_folders_only(evaluated_run):
    runs_dir = evaluated_run.root.parent
    (runs_dir / "notes").mkdir()                     # no config.yaml: not a run
    model = runs_dir / "exported"                    # a model folder that happens to hold a config.yaml
    model.mkdir()
    (model / "config.yaml").write_text("{}")
    (model / "config.json").write_text("{}")
    assert [p.root.name for p in find_runs(runs_dir)] == ["demo-run"]
    assert find_runs(runs_dir / "missing") == []


def test_format_table_right_aligns_numeric_columns():
    assert format_table(["run", "loss"], [["a", "1.5"], ["bb", "-"]]).splitlines() == [
        "run  loss", "a     1.5", "bb      -"]
