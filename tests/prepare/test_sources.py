"""Several sources (`data.sources`): mixed by weight, deterministic, each with its counts; one source is data.path."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from tunesmith.cli import main
from tunesmith.config import load_config
from tunesmith.data.sources import mixed_counts, sample_indices
from tunesmith.errors import ConfigError
from tunesmith.prepare.pipeline import PreparedExamples, load_prepared, prepare
from tunesmith.report.html import data_section
from tunesmith.runs import create_run


def write_qa(path, n: int, topic: str) -> str:
    rows = [{"question": f"What is {topic} {i}?", "answer": f"{topic} {i} is a thing."} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


@pytest.fixture
def files(tmp_path):
    return write_qa(tmp_path / "general.jsonl", 400, "general"), write_qa(tmp_path / "mine.jsonl", 100, "mine")


@pytest.fixture
def run(tmp_path, tiny_model_dir):
    def prepare_with(name: str, *overrides: str):
        config = load_config(None, [f"model.name={tiny_model_dir}", f"output.runs_dir={tmp_path / 'runs'}",
                                    f"output.name={name}", "template.name=qa", *overrides])
        return prepare(create_run(config), config.model, config.data, config.template, config.tokenization,
                       config.split)
    return prepare_with


def sources(*entries: dict) -> str:
    return "data.sources=" + json.dumps(list(entries))


def trained_files(result) -> list[str]:
    lines = (result.paths.prepared / "train_records.jsonl").read_text().splitlines()
    return [json.loads(line)["file"] for line in lines]


def test_weights_3_to_1_give_a_3_to_1_training_set_in_the_same_order_for_the_same_seed(files, run):
    general, mine = files
    mix = sources({"path": general, "weight": 3}, {"path": mine, "weight": 1})
    result = run("a", mix)
    counts = Counter(trained_files(result))
    assert abs(counts[general] / counts[mine] - 3) <= 0.03
    by_path = {s.path: s for s in result.manifest.sources}
    assert (by_path[general].train, by_path[mine].train) == (counts[general], counts[mine])
    # the source scarcer for its weight (100 records, 10% held out) is used whole, never repeated
    assert (by_path[general].train, by_path[mine].train) == (270, 90)
    assert result.manifest.counts.test == 40 + 10
    # interleaved, not one source after the other, and the same order again for the same seed
    assert set(trained_files(result)[:40]) == {general, mine}
    assert trained_files(run("b", mix)) == trained_files(result)
    assert trained_files(run("c", mix, "split.seed=7")) != trained_files(result)
    stats = json.loads(result.paths.data_stats.read_text())
    assert [s["train"] for s in stats["sources"]] == [by_path[general].train, by_path[mine].train]
    report = data_section(stats, json.loads(result.paths.manifest.read_text()), [])
    assert "Sources" in report and general in report and "75.0%" in report
    assert any("2 sources mixed" in line for line in result.summary_lines())


def test_one_source_prepares_exactly_what_data_path_prepares_indexed_from_arrow(files, run):
    general, _ = files
    by_path = run("path", f"data.path={general}")
    by_sources = run("sources", sources({"path": general}))
    for a, b in zip(load_prepared(by_path.paths)[:2], load_prepared(by_sources.paths)[:2]):
        assert a["input_ids"] == b["input_ids"] and a["labels"] == b["labels"]
    train, _, _ = load_prepared(by_path.paths)
    examples = PreparedExamples(train)  # what training indexes: the Arrow file, no copy
    assert len(examples) == len(train) == 360
    assert [examples[i] for i in (0, 17, -1)] == [train[i] for i in (0, 17, len(train) - 1)]
    assert examples[1::120] == [train[i] for i in range(1, 360, 120)]
    assert examples.lengths().tolist() == [len(ids) for ids in train["input_ids"]]
    with pytest.raises(IndexError):
        examples[360]


def test_without_weights_every_record_is_used_and_max_records_caps_a_source(files, run):
    general, mine = files
    counts = Counter(trained_files(run("all", sources({"path": general}, {"path": mine, "max_records": 50}))))
    assert (counts[general], counts[mine]) == (360, 50)


def test_a_source_with_its_own_test_file(files, run, tmp_path):
    general, mine = files
    held_out = write_qa(tmp_path / "mine_test.jsonl", 7, "held")
    result = run("own", sources({"path": general}, {"path": mine, "test_path": held_out}))
    by_path = {s.path: s for s in result.manifest.sources}
    assert (by_path[mine].train, by_path[mine].test) == (100, 7)
    assert by_path[general].test == 40


@pytest.mark.parametrize("overrides", [
    ["data.path=x.jsonl", sources({"path": "y.jsonl"})],
    [sources({"path": "x.jsonl", "weight": 2}, {"path": "y.jsonl"})],
])
def test_both_paths_or_half_weighted_sources_are_config_errors(overrides):
    with pytest.raises(ConfigError, match="data.sources"):
        load_config(None, overrides)


def test_neither_path_nor_sources_is_a_clear_error(run):
    with pytest.raises(ConfigError, match="data.path is not set.*data.sources"):
        run("none")


def test_mixed_counts_take_the_scarcest_source_whole():
    assert mixed_counts([1000, 100], [3, 1]) == [300, 100]
    assert mixed_counts([100, 1000], [3, 1]) == [100, 33]
    assert mixed_counts([10, 20], [None, None]) == [10, 20]
    assert sample_indices(10, 4, 0, 1).tolist() == sorted(sample_indices(10, 4, 0, 1).tolist())
    assert sample_indices(10, 4, 0, 1).tolist() != sample_indices(10, 4, 0, 2).tolist()


def test_inspect_compares_several_files(files, tiny_model_dir, capsys):
    assert main(["data", "inspect", *files, "--model", str(tiny_model_dir), "--no-plot"]) == 0
    out = capsys.readouterr().out
    rows = {Path(line.split()[0]).name: line.split() for line in out.splitlines()[-2:]}
    assert rows["general.jsonl"][1:3] == ["400", "80.0%"] and rows["mine.jsonl"][1:3] == ["100", "20.0%"]


@pytest.mark.parametrize("first_rows", ["same shape", "another shape"])
def test_validation_beside_detection_finds_what_one_process_finds(tmp_path, monkeypatch, first_rows):
    """A large file is validated in a forked process while this one detects its shape, as the shape of its first
    rows: the same scan as validating after detection, also when the whole file's shape is another (validated
    again here) and with invalid rows among them."""
    from tunesmith.config import DataConfig
    from tunesmith.data import sources

    rows = [{"question": f"Q{i}?", "answer": f"A{i}."} for i in range(60)] + [{"question": "no answer"}]
    if first_rows == "another shape":  # alpaca first, but most rows are qa
        rows = [{"instruction": f"Do {i}", "output": f"Done {i}."} for i in range(5)] + rows
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "not json\n", encoding="utf-8")
    data = DataConfig(path=str(path), on_error="skip")
    monkeypatch.setattr(sources, "CHUNK_RECORDS", 8)
    monkeypatch.setattr(sources, "PARALLEL_SCAN_BYTES", 1 << 40)
    alone = sources.scan_file(str(path), data)
    monkeypatch.setattr(sources, "PARALLEL_SCAN_BYTES", 0)
    monkeypatch.setattr(sources.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert sources._scans_in_parallel(str(path), data)
    beside = sources.scan_file(str(path), data)
    assert (beside.shape, beside.total, beside.form, beside.carried) == (alone.shape, alone.total, alone.form,
                                                                         alone.carried) == (
        "qa", len(rows) + 1, None, 0)
    assert [str(r.problem) for r in beside.rejected] == [str(r.problem) for r in alone.rejected]
    assert len(alone.rejected) == 2 + (5 if first_rows == "another shape" else 0)
