"""Templates on the real SmolLM2 tokenizer: exact wording, chat segments, Jinja, auto."""

from __future__ import annotations

import pytest

from tunesmith.config import TemplateConfig
from tunesmith.data import Message, Record
from tunesmith.errors import ConfigError, DataError
from tunesmith.prepare.templates import render_prompt, render_segments, resolve_template_name

# Typed out from tatsu-lab/stanford_alpaca train.py PROMPT_DICT, independently of templates.py.
STANFORD_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\nTranslate to French.\n\n### Input:\nGood morning\n\n### Response:"
)
STANFORD_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\nName a primary colour.\n\n### Response:"
)


def pair(**fields) -> Record:
    return Record("t.jsonl", 1, "alpaca", **fields)


def conversation(*turns: tuple[str, str]) -> Record:
    return Record("t.jsonl", 7, "messages", messages=tuple(Message(r, c) for r, c in turns))


class TestAlpaca:
    def test_with_input_matches_stanford_text(self, tokenizer):
        record = pair(prompt="Translate to French.", input="Good morning", response="Bonjour")
        segments = render_segments(record, TemplateConfig(name="alpaca"), tokenizer)
        assert [s.trainable for s in segments] == [False, True]
        assert segments[0].text == STANFORD_WITH_INPUT
        assert segments[1].text == "Bonjour" + tokenizer.eos_token
        assert render_prompt(record, TemplateConfig(name="alpaca"), tokenizer) == STANFORD_WITH_INPUT

    def test_without_input_matches_stanford_text(self, tokenizer):
        record = pair(prompt="Name a primary colour.", response="Red.")
        assert render_prompt(record, TemplateConfig(name="alpaca"), tokenizer) == STANFORD_NO_INPUT
        assert "".join(s.text for s in render_segments(record, TemplateConfig(name="alpaca"), tokenizer)) \
            == STANFORD_NO_INPUT + "Red.<|im_end|>"

    def test_a_records_system_text_goes_first(self, tokenizer):
        record = pair(prompt="Name a primary colour.", response="Red.", system="Answer in one word.")
        assert render_prompt(record, TemplateConfig(name="alpaca"), tokenizer) == \
            "Answer in one word.\n\n" + STANFORD_NO_INPUT

    def test_single_turn_chat_record_uses_pair_template(self, tokenizer):
        record = conversation(("user", "Name a primary colour."), ("assistant", "Red."))
        assert render_prompt(record, TemplateConfig(name="alpaca"), tokenizer) == STANFORD_NO_INPUT

    def test_multi_turn_chat_record_is_a_clear_error(self, tokenizer):
        record = conversation(("user", "a"), ("assistant", "b"), ("user", "c"), ("assistant", "d"))
        with pytest.raises(DataError, match=r"t\.jsonl:7: .*multi-turn.*template.name=chat"):
            render_segments(record, TemplateConfig(name="alpaca"), tokenizer)


def test_qa_prompt_and_answer(tokenizer):
    record = pair(prompt="What is 2+2?", response="4")
    segments = render_segments(record, TemplateConfig(name="qa"), tokenizer)
    assert [(s.text, s.trainable) for s in segments] == [
        ("### Question:\nWhat is 2+2?\n\n### Answer:\n", False), ("4<|im_end|>", True)]
    assert render_prompt(record, TemplateConfig(name="qa"), tokenizer) == segments[0].text


def test_none_uses_prompt_as_given(tokenizer):
    record = pair(prompt="Q: 2+2?\nA:", response=" 4")
    assert [s.text for s in render_segments(record, TemplateConfig(name="none"), tokenizer)] == \
        ["Q: 2+2?\nA:", " 4<|im_end|>"]


def test_text_record_is_one_trainable_segment(tokenizer):
    record = Record("t.jsonl", 2, "text", text="Plain words.")
    for name in ("alpaca", "chat", "qa"):
        segments = render_segments(record, TemplateConfig(name=name), tokenizer)
        assert [(s.text, s.trainable) for s in segments] == [("Plain words.<|im_end|>", True)]
    with pytest.raises(DataError, match="no prompt"):
        render_prompt(record, TemplateConfig(name="qa"), tokenizer)


class TestChat:
    def test_multi_turn_with_system_trains_every_assistant_turn(self, tokenizer):
        record = conversation(("system", "Be brief."), ("user", "Hi"), ("assistant", "Hey"),
                              ("user", "Again?"), ("assistant", "Sure"))
        segments = render_segments(record, TemplateConfig(name="chat"), tokenizer)
        full = tokenizer.apply_chat_template([{"role": m.role, "content": m.content} for m in record.messages],
                                             tokenize=False)
        assert "".join(s.text for s in segments) == full
        assert [s.text for s in segments if s.trainable] == ["Hey<|im_end|>", "Sure<|im_end|>"]
        masked = "".join(s.text for s in segments if not s.trainable)
        assert "Be brief." in masked and "Again?" in masked and "You are a helpful" not in masked

    def test_system_prompt_from_config_unless_record_has_one(self, tokenizer):
        template = TemplateConfig(name="chat", system_prompt="Answer like a pirate.")
        plain = conversation(("user", "Hi"), ("assistant", "Arr"))
        assert render_prompt(plain, template, tokenizer).startswith(
            "<|im_start|>system\nAnswer like a pirate.<|im_end|>\n<|im_start|>user\nHi")
        own = conversation(("system", "Be brief."), ("user", "Hi"), ("assistant", "Arr"))
        prompt = render_prompt(own, template, tokenizer)
        assert "Be brief." in prompt and "pirate" not in prompt

    def test_prompt_stops_where_the_assistant_starts(self, tokenizer):
        record = pair(prompt="Hi", response="Hey")
        assert render_prompt(record, TemplateConfig(name="chat"), tokenizer).endswith(
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
        open_turn = conversation(("user", "Hi"), ("assistant", "Hey"), ("user", "More"))
        assert render_prompt(open_turn, TemplateConfig(name="chat"), tokenizer).endswith(
            "Hey<|im_end|>\n<|im_start|>user\nMore<|im_end|>\n<|im_start|>assistant\n")

    def test_template_that_rewrites_history_is_refused(self, tokenizer):
        # Like templates that strip earlier reasoning: earlier assistant turns render differently later on.
        rewriting = ("{% for m in messages %}{% if m.role == 'assistant' and not loop.last %}[old]"
                     "{% else %}{{ m.role }}: {{ m.content }}<|im_end|>{% endif %}{% endfor %}"
                     "{% if add_generation_prompt %}assistant: {% endif %}")
        other = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
        other.chat_template = rewriting
        record = conversation(("user", "a"), ("assistant", "b"), ("user", "c"), ("assistant", "d"))
        with pytest.raises(ConfigError, match="not prefix-stable"):
            render_segments(record, TemplateConfig(name="chat"), other)


class TestJinja:
    def test_from_string(self, tokenizer):
        template = TemplateConfig(name="jinja", jinja="{% if system %}{{ system }}\n{% endif %}Q: {{ prompt }}"
                                                      "{% if input %} ({{ input }}){% endif %}\nA: ")
        record = pair(prompt="2+2?", input="in base 10", response="4", system="Be exact.")
        assert [s.text for s in render_segments(record, template, tokenizer)] == \
            ["Be exact.\nQ: 2+2? (in base 10)\nA: ", "4<|im_end|>"]

    def test_from_file_keeps_trailing_newline(self, tokenizer, tmp_path):
        path = tmp_path / "prompt.jinja"
        path.write_text("Question: {{ prompt }}\nAnswer:\n", encoding="utf-8")
        template = TemplateConfig(name="jinja", jinja=str(path))
        assert render_prompt(pair(prompt="Why?", response="Because."), template, tokenizer) == \
            "Question: Why?\nAnswer:\n"

    def test_unknown_variable_names_the_allowed_ones(self, tokenizer):
        template = TemplateConfig(name="jinja", jinja="{{ question }}")
        with pytest.raises(ConfigError, match="'question' is undefined.*prompt, input, system"):
            render_prompt(pair(prompt="Why?"), template, tokenizer)

    def test_syntax_error_names_the_file_line(self, tokenizer, tmp_path):
        path = tmp_path / "bad.jinja"
        path.write_text("ok\n{{ prompt \n", encoding="utf-8")
        with pytest.raises(ConfigError, match=r"bad\.jinja: line \d+: invalid Jinja"):
            render_prompt(pair(prompt="x"), TemplateConfig(name="jinja", jinja=str(path)), tokenizer)


def test_auto_is_chat_with_a_chat_template_else_alpaca(tokenizer):
    assert resolve_template_name(TemplateConfig(), tokenizer) == "chat"
    bare = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    bare.chat_template = None
    assert resolve_template_name(TemplateConfig(), bare) == "alpaca"
    with pytest.raises(ConfigError, match="no chat template"):
        resolve_template_name(TemplateConfig(name="chat"), bare)
