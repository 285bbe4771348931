import json
import os

import pytest

from tunesmith.config import Config, load_config
from tunesmith.errors import RunError
from tunesmith.runs import (
    append_jsonl,
    atomic_dir,
    atomic_write_json,
    create_run,
    file_sha256,
    is_run_folder,
    locate_model,
    open_run,
    read_jsonl,
    read_run_info,
    run_paths,
)


def test_atomic_write_failure_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "a.json"
    atomic_write_json(path, {"v": 1})

    def failing_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError):
        atomic_write_json(path, {"v": 2})
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # no temp file left behind


def test_atomic_dir_replaces_only_when_complete(tmp_path):
    target = tmp_path / "ckpt"
    with atomic_dir(target) as tmp:
        (tmp / "w").write_text("one")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "w").write_text("half")
            raise RuntimeError("crash mid-write")
    assert (target / "w").read_text() == "one"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_jsonl_reader_ignores_a_torn_last_line(tmp_path):
    path = tmp_path / "m.jsonl"
    append_jsonl(path, {"step": 1})
    with open(path, "a") as f:
        f.write('{"step": 2, "lo')
    assert read_jsonl(path) == [{"step": 1}]


def test_file_hash_changes_with_content(tmp_path):
    a = tmp_path / "a.txt"
    a.write_text("x")
    first = file_sha256(a)
    a.write_text("y")
    assert file_sha256(a) != first


@pytest.mark.parametrize("name", ["../escape", "a/b", "..", ""])
def test_run_names_cannot_escape_the_runs_folder(name):
    config = load_config(None, [f"output.name={name!r}"]) if name else Config()
    if not name:
        assert run_paths(config).root.parent.name == "runs"
        return
    with pytest.raises(RunError):
        run_paths(config)


def test_created_run_saves_its_config_and_reopens(tmp_path):
    config = load_config(None, [f"output.runs_dir={tmp_path}", "training.max_steps=7"])
    paths = create_run(config)
    reopened_paths, reopened = open_run(paths.root)
    assert reopened.training.max_steps == 7
    assert reopened.output.name == paths.root.name


def test_open_run_on_a_plain_folder_is_a_clear_error(tmp_path):
    with pytest.raises(RunError, match="not a run folder"):
        open_run(tmp_path)


def test_default_run_name_is_stable_for_a_config_and_changes_with_it():
    config = load_config(None, ["data.path=data/qa.jsonl"])
    same = load_config(None, ["data.path=data/qa.jsonl"])
    changed = load_config(None, ["data.path=data/qa.jsonl", "training.learning_rate=1e-3"])
    assert run_paths(config) == run_paths(same)
    assert run_paths(config) != run_paths(changed)
    assert run_paths(config).root.name.startswith("qa-lora-")


class TestLocateModel:
    def test_plain_model_folder_has_no_run_info(self, tiny_model_dir):
        assert locate_model(str(tiny_model_dir)) == (None, None)

    def test_a_name_that_is_no_folder_is_left_to_the_model_loader(self):
        assert locate_model("smollm2-135m-instruct") == (None, None)

    def test_run_without_model_is_a_clear_error(self, tmp_path):
        (tmp_path / "config.yaml").write_text("{}\n")
        with pytest.raises(RunError, match="no trained model"):
            locate_model(str(tmp_path))

    def test_run_folder_points_at_its_model(self, tmp_path):
        (tmp_path / "config.yaml").write_text("{}\n")
        (tmp_path / "model").mkdir()
        (tmp_path / "model" / "tunesmith.json").write_text(json.dumps({"base_model": "b", "method": "lora"}))
        assert locate_model(str(tmp_path)) == (tmp_path / "model", {"base_model": "b", "method": "lora"})
        assert locate_model(str(tmp_path / "model")) == (tmp_path / "model", {"base_model": "b", "method": "lora"})


@pytest.mark.parametrize("text, message", [("{not json", "not valid JSON"), ('{"method": "lora"}', "base_model"),
                                           ("[1]", "base_model")])
def test_broken_run_info_is_a_run_error(tmp_path, text, message):
    (tmp_path / "tunesmith.json").write_text(text)
    with pytest.raises(RunError, match=message):
        read_run_info(tmp_path)


def test_a_model_folder_with_a_config_yaml_is_not_a_run(tmp_path):
    (tmp_path / "config.yaml").write_text("{}\n")
    assert is_run_folder(tmp_path)
    (tmp_path / "config.json").write_text("{}\n")
    assert not is_run_folder(tmp_path)
