"""prepare() end to end on a small file with the tiny model (real SmolLM2 tokenizer)."""

from __future__ import annotations

import json

import pytest

from tunesmith.config import Config, load_config
from tunesmith.errors import ConfigError, RunError
from tunesmith.prepare.pipeline import load_prepared, prepare, preparation_hash
from tunesmith.prepare.tokenization import IGNORE_INDEX
from tunesmith.runs import RunPaths, create_run


def write_qa(path, n: int, offset: int = 0) -> str:
    rows = [{"question": f"What is item {i + offset}?", "answer": f"Item {i + offset} is a small thing."}
            for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def prepare_config(config: Config):
    """What the api does: make the config's run folder, then hand the stage its sections."""
    return prepare(create_run(config), config.model, config.data, config.template, config.tokenization,
                   config.split)


@pytest.fixture
def make_config(tmp_path, tiny_model_dir):
    data = write_qa(tmp_path / "qa.jsonl", 40)

    def make(*overrides: str):
        return load_config(None, [f"data.path={data}", f"model.name={tiny_model_dir}",
                                  f"output.runs_dir={tmp_path / 'runs'}", "output.name=prep", "split.test_size=8",
                                  *overrides])
    return make


def test_prepared_splits_load_from_disk_with_manifest_counts(make_config):
    from datasets import load_from_disk

    result = prepare_config(make_config())
    assert not result.reused
    train = load_from_disk(str(result.paths.prepared / "train"))
    test = load_from_disk(str(result.paths.prepared / "test"))
    assert (len(train), len(test)) == (32, 8)
    assert train.column_names == ["input_ids", "labels"]
    manifest = json.loads(result.paths.manifest.read_text())
    assert manifest["counts"]["train"] == 32
    assert manifest["counts"]["test"] == 8 and manifest["counts"]["dropped"] == 0
    assert manifest["shape"] == "qa" and manifest["template"] == "chat"
    assert manifest["tokens"]["train"]["total"] == sum(len(r) for r in train["input_ids"])
    assert manifest["tokens"]["train"]["loss"] == sum(sum(t != IGNORE_INDEX for t in r[1:]) for r in train["labels"])
    assert manifest["max_length"] == max(len(r) for r in list(train["input_ids"]) + list(test["input_ids"]))
    # Records are saved in the same order as the examples.
    records = [json.loads(line) for line in (result.paths.prepared / "train_records.jsonl").read_text().splitlines()]
    assert len(records) == 32
    first_answer = [t for t in train[0]["labels"] if t != IGNORE_INDEX]
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(manifest["model"])
    assert tokenizer.decode(first_answer) == records[0]["response"] + "<|im_end|>"


def test_rerun_reuses_and_changed_config_or_data_reprepares(make_config, tmp_path):
    first = prepare_config(make_config())
    stamp = first.paths.manifest.stat().st_mtime_ns
    again = prepare_config(make_config())
    assert again.reused and again.manifest == first.manifest
    assert again.paths.manifest.stat().st_mtime_ns == stamp
    assert "reused" in again.summary_lines()[0]

    changed = prepare_config(make_config("template.name=qa"))
    assert not changed.reused and changed.manifest.template == "qa"
    _, test, manifest = load_prepared(changed.paths)
    assert manifest.config_hash != first.manifest.config_hash

    write_qa(tmp_path / "qa.jsonl", 40, offset=100)
    new_data = prepare_config(make_config("template.name=qa"))
    assert not new_data.reused and new_data.manifest.source.sha256 != first.manifest.source.sha256


def test_examples_with_nothing_left_to_learn_are_dropped_and_reported(make_config, tmp_path):
    long_prompt = {"question": "Explain " + "very " * 80 + "carefully.", "answer": "No."}
    with open(tmp_path / "qa.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(long_prompt) + "\n")
    result = prepare_config(make_config("tokenization.max_length=48", "tokenization.truncation_side=right",
                                 "split.test_size=0.1"))
    counts = result.manifest.counts.model_dump()
    assert counts["dropped"] == 1 and counts["truncated"] >= 1
    assert result.manifest.dropped[0]["where"].endswith("qa.jsonl:41")
    train, test, _ = load_prepared(result.paths)
    assert len(train) + len(test) == 40
    assert all(any(t != IGNORE_INDEX for t in labels) for labels in list(train["labels"]) + list(test["labels"]))
    assert any("dropped 1" in line for line in result.summary_lines())


def test_separate_test_file_is_the_test_split(make_config, tmp_path):
    test_file = write_qa(tmp_path / "held_out.jsonl", 5, offset=500)
    result = prepare_config(make_config(f"data.test_path={test_file}"))
    assert (result.manifest.counts.train, result.manifest.counts.test) == (40, 5)
    lines = (result.paths.prepared / "test_records.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["prompt"] == "What is item 500?"


def test_preparation_hash_follows_the_sections_that_change_the_data(make_config):
    config = make_config()
    sections = (config.model, config.data, config.template, config.tokenization, config.split)
    padded = config.tokenization.model_copy(update={"padding_side": "left"})
    longer = config.tokenization.model_copy(update={"max_length": 64})
    assert preparation_hash(*sections) == preparation_hash(*sections[:3], padded, config.split)
    assert preparation_hash(*sections) != preparation_hash(*sections[:3], longer, config.split)


def test_a_missing_data_file_leaves_no_run_folder_behind(make_config, tmp_path):
    from tunesmith import api

    with pytest.raises(ConfigError, match="no such file"):
        api.prepare_data(None, [f"data.path={tmp_path / 'nothing.jsonl'}", f"output.runs_dir={tmp_path / 'runs'}"])
    assert not (tmp_path / "runs").exists()


def test_missing_data_path_and_unprepared_run_are_clear_errors(make_config, tmp_path):
    with pytest.raises(ConfigError, match="data.path"):
        prepare_config(make_config("data.path=null"))
    with pytest.raises(RunError, match="data prepare"):
        load_prepared(RunPaths(tmp_path / "runs" / "nothing"))


def test_cli_prepares_and_reports_bad_template_in_one_line(make_config, tmp_path, tiny_model_dir, capsys):
    from tunesmith.cli import main

    chat = tmp_path / "chat.jsonl"
    turns = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
             {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]
    chat.write_text("".join(json.dumps({"messages": turns[:2] + [dict(t, content=t["content"] + str(i))
                                                                   for t in turns[2:]]}) + "\n" for i in range(6)))
    config = tmp_path / "prep.yaml"
    config.write_text(f"data:\n  path: chat.jsonl\nmodel:\n  name: {tiny_model_dir}\nsplit:\n  test_size: 2\n"
                      f"output:\n  runs_dir: {tmp_path / 'runs'}\n  name: cli\n")
    assert main(["data", "prepare", str(config)]) == 0
    assert "train: 4 examples" in capsys.readouterr().out
    assert main(["data", "prepare", str(config), "--set", "template.name=alpaca"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "chat.jsonl:1" in err and "template.name=chat" in err


def test_prepare_saves_data_statistics_for_the_report(make_config):
    result = prepare_config(make_config())
    stats = json.loads(result.paths.data_stats.read_text())
    assert stats["num_records"] == 40
    assert stats["overlap"]["same_prompt"] == 0
    assert stats["lengths"]["total"]["max"] == result.manifest.max_length
