"""Real files are dirty: a few invalid records are skipped and kept aside, baked-in templates are stripped, and
`inspect` reports the invalid records grouped together with the statistics of the valid ones."""

from __future__ import annotations

import json

import pytest

from tunesmith.config import DataConfig, ModelConfig, TemplateConfig, TokenizationConfig, load_config
from tunesmith.errors import DataError
from tunesmith.prepare.inspect import inspect_data
from tunesmith.prepare.manifest import Manifest
from tunesmith.prepare.pipeline import prepare, preparation_hash
from tunesmith.runs import create_run

QA = "### Question:\n{q}\n\n### Answer:"


def write_rows(path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def course_rows(n: int, blank_lines: tuple[int, ...] = (), baked: bool = True) -> list[dict]:
    """`n` question/answer rows, the prompts templated with qa markers, blank records at `blank_lines` (1-based)."""
    rows = [{"question": QA.format(q=f"What is item {i}?") if baked else f"What is item {i}?",
             "answer": f"Item {i} is a small thing."} for i in range(n)]
    for line in blank_lines:
        rows[line - 1] = {"question": "", "answer": ""}
    return rows


@pytest.fixture
def make_config(tmp_path, tiny_model_dir):
    def make(path: str, *overrides: str):
        return load_config(None, [f"data.path={path}", f"model.name={tiny_model_dir}",
                                  f"output.runs_dir={tmp_path / 'runs'}", "output.name=dirty", "split.test_size=4",
                                  *overrides])
    return make


def prepare_config(config):
    return prepare(create_run(config), config.model, config.data, config.template, config.tokenization,
                   config.split)


def test_a_few_invalid_records_are_skipped_kept_in_rejected_jsonl_and_warned_about(tmp_path, make_config):
    path = write_rows(tmp_path / "qa.jsonl", course_rows(120, blank_lines=(7,), baked=False))
    result = prepare_config(make_config(path))
    rejected = [json.loads(line) for line in result.paths.rejected.read_text().splitlines()]
    assert rejected == [{"where": f"{path}:7", "reason": "question: empty; expected the prompt text",
                         "record": {"question": "", "answer": ""}}]
    manifest = result.manifest
    assert manifest.counts.skipped_invalid == 1 and manifest.counts.records == 119
    (warning,) = manifest.warnings
    assert warning.startswith("skipped 1 invalid record of 120 (data.on_error: auto skips up to 1%)")
    assert f"{path}:7: question: empty" in warning and str(result.paths.rejected) in warning
    assert [line for line in result.summary_lines() if line.startswith("warning:")] == [f"warning: {warning}"]
    again = prepare_config(make_config(path))
    assert again.reused and again.notes() == result.notes()  # a reused preparation warns again


def test_above_one_percent_nothing_is_prepared(tmp_path, make_config):
    path = write_rows(tmp_path / "qa.jsonl", course_rows(99, blank_lines=(3, 50), baked=False))
    with pytest.raises(DataError, match="more than the 1% data.on_error: auto skips"):
        prepare_config(make_config(path))


def test_a_clean_reprepare_removes_an_old_rejected_jsonl(tmp_path, make_config):
    path = write_rows(tmp_path / "qa.jsonl", course_rows(100, blank_lines=(5,), baked=False))
    paths = prepare_config(make_config(path)).paths
    assert paths.rejected.is_file()
    write_rows(tmp_path / "qa.jsonl", course_rows(100, baked=False))
    result = prepare_config(make_config(path))
    assert not result.reused and not paths.rejected.exists() and result.manifest.warnings == []


def test_the_baked_template_is_stripped_and_recorded_in_the_manifest(tmp_path, make_config):
    path = write_rows(tmp_path / "qa.jsonl", course_rows(20))
    result = prepare_config(make_config(path))
    records = [json.loads(line) for line in (result.paths.prepared / "train_records.jsonl").read_text().splitlines()]
    assert records and all(r["prompt"].startswith("What is item") and "###" not in r["prompt"] for r in records)
    assert result.manifest.stripped_template.model_dump() == {"form": "qa", "records": 20, "setting": "auto"}
    assert any(line.startswith("stripped the baked-in ### Question: / ### Answer: template from 20 of 20 prompts")
               for line in result.summary_lines())


@pytest.mark.parametrize("overrides", [("data.strip_template=false",), ("template.name=none",)])
def test_false_or_template_none_keep_the_markers(tmp_path, make_config, overrides):
    path = write_rows(tmp_path / "qa.jsonl", course_rows(20))
    result = prepare_config(make_config(path, *overrides))
    records = (result.paths.prepared / "train_records.jsonl").read_text()
    assert "### Question:" in records and result.manifest.stripped_template is None


def test_a_test_file_loses_the_form_the_training_file_lost(tmp_path, make_config):
    train = write_rows(tmp_path / "train.jsonl", course_rows(20))
    test = write_rows(tmp_path / "test.jsonl", course_rows(2, baked=False) + course_rows(1))
    result = prepare_config(make_config(train, f"data.test_path={test}"))
    records = (result.paths.prepared / "test_records.jsonl").read_text()
    assert "###" not in records and result.manifest.counts.test == 3


def test_strip_and_on_error_settings_change_the_preparation_hash(make_config, tmp_path):
    config = make_config(write_rows(tmp_path / "qa.jsonl", course_rows(4)))
    sections = [config.model, config.data, config.template, config.tokenization, config.split]
    for update in ({"strip_template": False}, {"strip_template": True}, {"on_error": "skip"}):
        changed = [*sections]
        changed[1] = config.data.model_copy(update=update)
        assert preparation_hash(*sections) != preparation_hash(*changed)


def test_a_manifest_written_before_these_fields_still_reads(tmp_path, make_config):
    path = write_rows(tmp_path / "qa.jsonl", course_rows(8, baked=False))
    manifest = prepare_config(make_config(path)).manifest.to_dict()
    for key in ("stripped_template", "warnings"):
        del manifest[key]
    (tmp_path / "old.json").write_text(json.dumps(manifest))
    old = Manifest.read(tmp_path / "old.json")
    assert old.stripped_template is None and old.warnings == []


class TestInspect:
    @staticmethod
    def inspect(path, tiny_model_dir, **data):
        return inspect_data(path, DataConfig(**data), ModelConfig(name=str(tiny_model_dir)), TemplateConfig(),
                            TokenizationConfig())

    def test_reports_the_invalid_grouped_with_the_statistics_of_the_valid(self, tmp_path, tiny_model_dir):
        rows = course_rows(40, blank_lines=(3, 9, 14, 20, 33), baked=False)
        rows[25] = {"question": "What?", "answer": 7}
        text = "".join(json.dumps(r) + "\n" for r in rows) + "{oops\n"
        (tmp_path / "qa.jsonl").write_text(text)
        result = self.inspect(str(tmp_path / "qa.jsonl"), tiny_model_dir)
        assert result.stats.num_records == 34 and result.records_read == 41 and result.stats.truncation
        empty, *others = result.invalid
        assert (empty.kind, empty.count) == ("question: empty; expected the prompt text", 5)
        assert empty.examples == [f"{tmp_path / 'qa.jsonl'}:{line}" for line in (3, 9, 14)]
        assert sorted(g.count for g in others) == [1, 1] and len(result.skipped) == 7
        assert not result.is_clean and result.invalid_outcome.startswith("training stops: 7 of 41 records")

    def test_skip_makes_the_report_clean(self, tmp_path, tiny_model_dir):
        path = write_rows(tmp_path / "qa.jsonl", course_rows(10, blank_lines=(2,), baked=False))
        result = self.inspect(path, tiny_model_dir, on_error="skip")
        assert result.is_clean and result.invalid[0].count == 1

    def test_shows_the_template_stripped_as_prepare_would(self, tmp_path, tiny_model_dir):
        path = write_rows(tmp_path / "qa.jsonl", course_rows(10))
        result = self.inspect(path, tiny_model_dir)
        stripped = result.stripped
        assert (stripped.form, stripped.records, stripped.where) == ("qa", 10, f"{path}:1")
        assert (stripped.before, stripped.after) == (QA.format(q="What is item 0?"), "What is item 0?")
        assert result.stats.baked_templates.records == 0  # the statistics are of what training sees
        assert self.inspect(path, tiny_model_dir, strip_template=False).stats.baked_templates.records == 10
