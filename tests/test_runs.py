import json
import os

import pytest

from tunesmith.config import Config, load_config
from tunesmith.errors import RunError
from tunesmith.runs import (append_jsonl, atomic_dir, atomic_write_json, create_run, file_sha256, open_run,
                            read_jsonl, run_paths)


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
