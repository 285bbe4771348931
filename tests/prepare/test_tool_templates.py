"""Tool-call conversations rendered for training and generation: SmolLM2's own template cannot show tools, so the
shipped one is used; a model's own template is used when it can; only the assistant's turns (calls included) are
trained, checked on a tiny model that trains a few steps."""

from __future__ import annotations

import json

import pytest

from tunesmith.config import TemplateConfig
from tunesmith.data.records import Message, Record, ToolCall
from tunesmith.errors import DataError
from tunesmith.prepare.templates import (render_prompt, render_segments, shipped_tool_template, supports_tools,
                                         tool_chat_template, writes_tool_call_blocks)

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city now",
                                            "parameters": {"type": "object",
                                                           "properties": {"city": {"type": "string"}}}}}
CITIES = ["Oslo", "Lima", "Pune", "Kyiv", "Nuuk", "Baku", "Riga", "Doha"]


def weather_record(city: str = "Oslo", line: int = 1) -> Record:
    return Record("t.jsonl", line, "messages", tools=(WEATHER,), messages=(
        Message("user", f"Weather in {city}?"),
        Message("assistant", "", (ToolCall("call_1", "get_weather", json.dumps({"city": city})),)),
        Message("tool", '{"temp_c": 21}', tool_call_id="call_1"),
        Message("assistant", f"It is 21 C in {city}.")))


def call_text(name: str, arguments: dict) -> str:
    """A call as the shipped template writes it, typed out independently of the template."""
    return f'<tool_call>\n{{"name": "{name}", "arguments": {json.dumps(arguments)}}}\n</tool_call>'


def expected_answers(city: str) -> list[str]:
    return [call_text("get_weather", {"city": city}) + "<|im_end|>", f"It is 21 C in {city}.<|im_end|>"]


@pytest.fixture
def own_tool_tokenizer(tokenizer_dir):
    """The SmolLM2 tokenizer with a chat template of its own that renders tools (marked `# Own tools`)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tokenizer.chat_template = shipped_tool_template().replace("# Tools", "# Own tools")
    return tokenizer


class TestToolTemplateChoice:
    def test_smollm2_template_cannot_render_tools(self, tokenizer):
        assert not supports_tools(tokenizer)
        assert tool_chat_template(tokenizer) == shipped_tool_template()
        assert writes_tool_call_blocks(tokenizer)

    def test_a_models_own_tool_template_is_used(self, own_tool_tokenizer):
        assert supports_tools(own_tool_tokenizer) and tool_chat_template(own_tool_tokenizer) is None
        assert "# Own tools" in render_prompt(weather_record(), TemplateConfig(), own_tool_tokenizer)


class TestToolSegments:
    def test_only_assistant_turns_and_their_calls_are_trainable(self, tokenizer):
        segments = render_segments(weather_record(), TemplateConfig(), tokenizer)
        assert [s.text for s in segments if s.trainable] == expected_answers("Oslo")
        masked = "".join(s.text for s in segments if not s.trainable)
        assert '"name": "get_weather", "description"' in masked  # the offered tools are prompt
        assert "<tool_response>\n{\"temp_c\": 21}\n</tool_response>" in masked  # so is the tool's result
        assert "Weather in Oslo?" in masked

    def test_parallel_calls_and_content_before_them(self, tokenizer):
        calls = (ToolCall("a", "get_weather", '{"city": "Oslo"}'), ToolCall("b", "get_weather", '{"city": "Lima"}'))
        record = Record("t.jsonl", 2, "messages", tools=(WEATHER,), messages=(
            Message("system", "Be brief."), Message("user", "Oslo and Lima?"),
            Message("assistant", "Looking both up.", calls), Message("tool", "21", tool_call_id="a"),
            Message("tool", "25", tool_call_id="b"), Message("assistant", "21 and 25.")))
        segments = render_segments(record, TemplateConfig(), tokenizer)
        assert [s.text for s in segments if s.trainable] == [
            "Looking both up.\n" + call_text("get_weather", {"city": "Oslo"}) + "\n"
            + call_text("get_weather", {"city": "Lima"}) + "<|im_end|>", "21 and 25.<|im_end|>"]
        assert segments[0].text.startswith("<|im_start|>system\nBe brief.\n\n# Tools\n")

    def test_prompt_is_what_training_saw_before_the_last_answer(self, tokenizer):
        record = weather_record()
        segments = render_segments(record, TemplateConfig(), tokenizer)
        before_last = "".join(s.text for s in segments[:-2])
        assert render_prompt(record, TemplateConfig(), tokenizer) == before_last

    def test_the_models_own_template_masks_the_same_way(self, own_tool_tokenizer):
        segments = render_segments(weather_record(), TemplateConfig(), own_tool_tokenizer)
        assert [s.text for s in segments if s.trainable] == expected_answers("Oslo")

    def test_a_prompt_template_is_a_clear_error(self, tokenizer):
        with pytest.raises(DataError, match=r"t\.jsonl:1: .*tool calls.*template.name=chat"):
            render_segments(weather_record(), TemplateConfig(name="alpaca"), tokenizer)

    def test_plain_conversations_still_use_the_models_template(self, tokenizer):
        record = Record("t.jsonl", 1, "messages", messages=(Message("user", "Hi"), Message("assistant", "Yo")))
        assert render_prompt(record, TemplateConfig(), tokenizer).startswith(
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM")


def _labelled_spans(example, tokenizer) -> list[str]:
    """The decoded runs of positions that carry a label."""
    spans, run = [], []
    for token, label in zip(example["input_ids"], example["labels"]):
        if label != -100:
            assert label == token
            run.append(token)
        elif run:
            spans.append(run)
            run = []
    spans += [run] if run else []
    return [tokenizer.decode(s, clean_up_tokenization_spaces=False) for s in spans]


def test_tiny_model_trains_on_tool_calls_with_labels_on_the_assistant_turns_only(tmp_path, tiny_model_dir, tokenizer):
    from tunesmith.config import load_config
    from tunesmith.data.records import record_to_dict
    from tunesmith.prepare.pipeline import load_prepared, prepare
    from tunesmith.runs import create_run
    from tunesmith.train.loop import train

    data = tmp_path / "tools.jsonl"
    rows = []
    for i, city in enumerate(CITIES):
        row = record_to_dict(weather_record(city))
        rows.append({"tools": row["tools"], "messages": row["messages"]})
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    config = load_config(None, [f"data.path={data}", f"model.name={tiny_model_dir}",
                                f"output.runs_dir={tmp_path / 'runs'}", "output.name=tools", "split.test_size=2",
                                "tokenization.max_length=1024", "training.precision=fp32", "training.max_steps=3",
                                "training.warmup_steps=0", "training.lr_scheduler=constant"])
    paths = prepare(create_run(config), config.model, config.data, config.template, config.tokenization,
                    config.split).paths
    train_set, test_set, _ = load_prepared(paths)
    assert len(train_set) + len(test_set) == len(CITIES)
    for example in list(train_set) + list(test_set):
        city = next(c for c in CITIES if f"Weather in {c}?" in tokenizer.decode(example["input_ids"]))
        assert _labelled_spans(example, tokenizer) == expected_answers(city)

    result = train(paths, config.model, config.training, config.template)
    losses = [json.loads(line)["loss"] for line in paths.metrics.read_text().splitlines() if '"loss"' in line]
    assert len(losses) == 3 and all(0 < loss < 20 for loss in losses)
    assert result is not None and paths.model.exists()
