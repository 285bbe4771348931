"""A run trained on prompts with a baked-in template answers a user who pastes that template as it answers the
plain question: `tunesmith.json` records the stripped form and `Generator.render` strips it the same way."""

from __future__ import annotations

import json
import shutil

import pytest

from tunesmith.config import GenerateConfig, load_config
from tunesmith.data.prompts import as_prompt_record
from tunesmith.data.records import Message, Record
from tunesmith.errors import RunError
from tunesmith.data.strip import unbake
from tunesmith.use.generation import load_for_inference

MARKED = "### Question:\nWhat is the code of box 3?\n\n### Answer:"
PLAIN = "What is the code of box 3?"


def make_run(root, model_dir, strip_template):
    """A run folder as training leaves it, on qa-marked data: prepared splits, the model and the `tunesmith.json`
    that `run_info` writes from the manifest (the weights are the untrained tiny model's)."""
    from tunesmith.prepare.manifest import Manifest
    from tunesmith.prepare.pipeline import prepare
    from tunesmith.runs import create_run
    from tunesmith.train.artifacts import run_info

    data = root / "marked.jsonl"
    data.write_text("".join(json.dumps({"question": f"### Question:\nWhat is the code of box {i}?\n\n### Answer:",
                                        "answer": f"Box {i} has code {i * 7}."}) + "\n" for i in range(10)))
    config = load_config(base={
        "model": {"name": str(model_dir)}, "data": {"path": str(data), "strip_template": strip_template},
        "split": {"test_size": 3}, "training": {"method": "full", "precision": "fp32"},
        "output": {"runs_dir": str(root / "runs"), "name": f"strip-{strip_template}"}})
    paths = create_run(config)
    prepare(paths, config.model, config.data, config.template, config.tokenization, config.split)
    info = run_info(config.model, config.training, config.template, Manifest.read(paths.manifest))
    shutil.copytree(model_dir, paths.model)
    (paths.model / "tunesmith.json").write_text(json.dumps(info))
    return paths.root


@pytest.fixture(scope="module")
def stripped_run(varied_model_dir, tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("stripped"), varied_model_dir, "auto")


@pytest.fixture(scope="module")
def kept_run(varied_model_dir, tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("kept"), varied_model_dir, False)


@pytest.fixture(scope="module")
def generator(stripped_run):
    return load_for_inference(str(stripped_run), precision="fp32")


def test_tunesmith_json_records_the_stripped_form_or_none(stripped_run, kept_run):
    assert json.loads((stripped_run / "model" / "tunesmith.json").read_text())["stripped_template"] == "qa"
    assert json.loads((kept_run / "model" / "tunesmith.json").read_text())["stripped_template"] is None


class TestRender:
    def test_a_marked_prompt_renders_as_the_plain_question(self, generator):
        assert generator.stripped_form == "qa"
        rendered = generator.render(MARKED)
        assert rendered == generator.render(PLAIN) and "### Question" not in rendered

    def test_records_and_conversations_are_stripped_too(self, generator):
        plain = generator.render(PLAIN)
        assert generator.render(Record("p.jsonl", 1, "prompt", prompt=MARKED)) == plain
        assert generator.render([{"role": "user", "content": MARKED}]) == plain
        earlier = [Message("user", MARKED), Message("assistant", "Box 3 has code 21."), Message("user", MARKED)]
        same = [Message("user", PLAIN), Message("assistant", "Box 3 has code 21."), Message("user", PLAIN)]
        assert generator.render(earlier) == generator.render(same)

    def test_a_plain_question_is_untouched(self, generator):
        from tunesmith.prepare.templates import render_prompt

        assert generator.render(PLAIN) == render_prompt(as_prompt_record(PLAIN), generator.template,
                                                        generator.tokenizer)
        alpaca = "### Instruction:\nAdd.\n\n### Response:"  # another form than training's: kept as is
        assert "### Instruction:" in generator.render(alpaca)

    def test_a_run_without_stripping_leaves_prompts_as_they_are(self, kept_run):
        kept = load_for_inference(str(kept_run), precision="fp32")
        assert kept.stripped_form is None
        assert "### Question:\nWhat is the code of box 3?" in kept.render(MARKED)
        assert kept.render(MARKED) != kept.render(PLAIN)


def test_generate_answers_a_marked_prompt_as_the_plain_one(stripped_run, tmp_path):
    from tunesmith import api

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": MARKED}) + "\n")
    settings = GenerateConfig(max_new_tokens=6, precision="fp32")
    marked, plain, from_file = api.generate_answers(str(stripped_run), prompts=[MARKED, PLAIN],
                                                    input_path=str(prompts), settings=settings, progress=False)
    assert marked["prompt_tokens"] == plain["prompt_tokens"] == from_file["prompt_tokens"]
    assert marked["output"] == plain["output"] == from_file["output"]


class TestUnbake:
    def test_a_baked_system_text_becomes_the_system_turn(self):
        chatml = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi?<|im_end|>\n"
        record = unbake(as_prompt_record(chatml), "chatml")
        assert record.messages == (Message("system", "Be brief."), Message("user", "Hi?"), Message("assistant", ""))
        own = unbake(as_prompt_record([Message("system", "Mine."), Message("user", chatml)]), "chatml")
        assert own.messages[:2] == (Message("system", "Mine."), Message("user", "Hi?"))

    def test_an_alpaca_input_follows_the_instruction(self):
        record = unbake(as_prompt_record("### Instruction:\nAdd.\n\n### Input:\n2, 2\n\n### Response:"), "alpaca")
        assert record.messages[0] == Message("user", "Add.\n\n2, 2")

    def test_without_a_form_or_in_another_form_the_record_is_the_same(self):
        record = as_prompt_record(MARKED)
        assert unbake(record, None) is record
        assert unbake(record, "alpaca").messages == record.messages
        assistant = as_prompt_record([Message("user", "q"), Message("assistant", MARKED), Message("user", "r")])
        assert unbake(assistant, "qa").messages == assistant.messages


class TestBrokenRunInfo:
    def write(self, tmp_path, stripped):
        (tmp_path / "tunesmith.json").write_text(json.dumps({"base_model": "b", "stripped_template": stripped}))
        return tmp_path

    def test_a_stripped_form_that_is_not_a_name_is_named(self, tmp_path):
        from tunesmith.runs import read_run_info

        with pytest.raises(RunError, match="stripped_template"):
            read_run_info(self.write(tmp_path, ["qa"]))

    def test_an_unknown_form_fails_before_the_model_loads(self, tmp_path):
        with pytest.raises(RunError, match="stripped_template='xml' is none of qa, alpaca"):
            load_for_inference(str(self.write(tmp_path, "xml")), precision="fp32")
