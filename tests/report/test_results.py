"""Reading results files: a missing or broken file reads as nothing, never as an error."""

from __future__ import annotations

from tunesmith.report.results import fmt, ordered_models, read_config, read_json, token_lengths
from tunesmith.runs import RunPaths


def test_missing_and_broken_files_read_as_nothing(tmp_path):
    paths = RunPaths(tmp_path / "run")
    assert read_json(paths.train_summary) is None and read_config(paths) == {} and token_lengths(paths) == []
    paths.root.mkdir()
    paths.config.write_text("model: [unclosed")
    paths.train_summary.write_text("[1, 2]")  # JSON, but not an object
    assert read_json(paths.train_summary) is None and read_config(paths) == {}


def test_prepared_lengths_are_read_from_both_splits(evaluated_run):
    assert sorted(token_lengths(evaluated_run)) == sorted([10 + i for i in range(20)] + [10 + i for i in range(5)])


def test_models_and_numbers():
    assert ordered_models({"other": {}, "finetuned": {}, "base": {}}) == ["base", "finetuned", "other"]
    assert (fmt(0.123456, 4), fmt(True), fmt(float("nan")), fmt(2.5e7), fmt("x")) == ("0.1235", "true", "-", "2.5e+07",
                                                                                       "x")
