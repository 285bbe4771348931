"""Baked-in templates out of the prompts: each form's function alone, then records and whole files."""

from __future__ import annotations

import dataclasses

import pytest

from tunesmith.data.records import Message, Record
from tunesmith.data.stats import baked_templates
from tunesmith.data.strip import (STRIPPERS, Unbaked, baked_form, strip_alpaca, strip_chatml, strip_inst,
                                  strip_prompt, strip_qa, strip_record, strip_response, strip_templates)

ALPACA_NO_INPUT = ("Below is an instruction that describes a task. Write a response that appropriately completes "
                   "the request.\n\n### Instruction:\nAdd 2 and 2.\n\n### Response:")
ALPACA_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further context. "
                "Write a response that appropriately completes the request.\n\n### Instruction:\nAdd them.\n\n"
                "### Input:\n2 and 2\n\n### Response:\n")
EXAMPLES = {
    "qa": "### Question:\nWhat is 2+2?\n\n### Answer:",
    "alpaca": ALPACA_NO_INPUT,
    "chatml": "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "inst": "<s>[INST] What is 2+2? [/INST]",
}


class TestStripQa:
    @pytest.mark.parametrize("text,prompt", [
        ("### Question:\nWhat is 2+2?\n\n### Answer:", "What is 2+2?"),
        ("### Question: What is 2+2?\n### Answer:\n", "What is 2+2?"),
        ("###Question:\nLine one.\nLine two.", "Line one.\nLine two."),      # no answer header at the end
        ("  ### question:  What?  ", "What?"),                                  # case and spaces
    ])
    def test_the_question_is_what_is_left(self, text, prompt):
        assert strip_qa(text) == Unbaked(prompt)

    @pytest.mark.parametrize("text", [
        "What is 2+2?",                                                 # not templated
        "Intro.\n### Question:\nWhat?\n### Answer:",                    # text before the header: another form
        "### Question:\n\n### Answer:",                                 # nothing would be left
        "### Question: a\n### Answer: b\n### Question: c",              # a whole exchange, not one prompt
    ])
    def test_anything_else_is_not_this_form(self, text):
        assert strip_qa(text) is None


class TestStripAlpaca:
    def test_preamble_and_headers_go(self):
        assert strip_alpaca(ALPACA_NO_INPUT) == Unbaked("Add 2 and 2.")

    def test_the_input_section_becomes_the_input(self):
        assert strip_alpaca(ALPACA_INPUT) == Unbaked("Add them.", input="2 and 2")

    def test_headers_without_preamble(self):
        assert strip_alpaca("### Instruction:\nSay hi.\n\n### Response:") == Unbaked("Say hi.")

    @pytest.mark.parametrize("text", ["Say hi.",
                                      "### Instruction:\nSay hi.\n\n### Response:\nHi!\n\n### Instruction:\nx"])
    def test_anything_else_is_not_this_form(self, text):
        assert strip_alpaca(text) is None


class TestStripChatml:
    def test_user_turn_with_system_and_generation_prompt(self):
        text = ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
                "<|im_start|>assistant\n")
        assert strip_chatml(text) == Unbaked("What is 2+2?", system="Be brief.")

    def test_a_user_turn_alone(self):
        assert strip_chatml("<|im_start|>user\nHi?<|im_end|>") == Unbaked("Hi?")

    @pytest.mark.parametrize("text", [
        "Hi?",
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n<|im_start|>user\nMore?<|im_end|>",
        "Note: <|im_start|>user\nHi?<|im_end|>",                       # text outside the turns
        "<|im_start|>assistant\nHello<|im_end|>",                      # no user turn
    ])
    def test_conversations_and_other_text_are_left_alone(self, text):
        assert strip_chatml(text) is None


class TestStripInst:
    def test_system_block_and_bos(self):
        assert strip_inst("<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi? [/INST]") == Unbaked("Hi?", system="Be brief.")

    def test_plain_tags(self):
        assert strip_inst("[INST]What is 2+2?[/INST]") == Unbaked("What is 2+2?")

    @pytest.mark.parametrize("text", ["Hi?", "[INST] a [/INST] b </s><s>[INST] c [/INST]", "[INST] open only"])
    def test_anything_else_is_not_this_form(self, text):
        assert strip_inst(text) is None


class TestStripResponse:
    @pytest.mark.parametrize("text,form,expected", [
        ("### Answer:\n4", "qa", "4"),
        ("### Response: 4", "alpaca", "4"),
        ("4<|im_end|>\n", "chatml", "4"),
        ("4 </s>", "inst", "4"),
        ("  4\n", "qa", "  4\n"),             # nothing to strip: the text stays exactly as it was
        ("### Answer:", "qa", "### Answer:"),  # nothing would be left
        ("4<|im_end|>", "qa", "4<|im_end|>"),  # another form's marker stays
    ])
    def test_only_the_forms_own_markers_go(self, text, form, expected):
        assert strip_response(text, form) == expected


class TestStripRecord:
    def test_prompt_and_response_lose_their_markers_and_the_input_is_kept(self):
        record = Record("f", 3, "qa", prompt=EXAMPLES["chatml"], input="Context.", response="4<|im_end|>")
        assert strip_record(record, "chatml") == dataclasses.replace(record, prompt="What is 2+2?", response="4")

    def test_a_baked_input_and_system_fill_the_record(self):
        record = Record("f", 1, "alpaca", prompt=ALPACA_INPUT, response="4")
        assert (strip_record(record, "alpaca").prompt, strip_record(record, "alpaca").input) == ("Add them.",
                                                                                                 "2 and 2")
        own = Record("f", 1, "qa", prompt="<|im_start|>system\nBaked.<|im_end|>\n<|im_start|>user\nHi<|im_end|>",
                     system="Own.", response="Hello")
        assert strip_record(own, "chatml").system == "Own."

    def test_never_mutates_and_returns_the_same_record_when_not_in_the_form(self):
        record = Record("f", 1, "qa", prompt=EXAMPLES["qa"], response="4")
        before = dataclasses.asdict(record)
        assert strip_record(record, "qa") is not record and dataclasses.asdict(record) == before
        plain = Record("f", 2, "qa", prompt="What is 2+2?", response="4")
        assert strip_record(plain, "qa") is plain

    def test_chat_and_text_records_are_left_alone(self):
        chat = Record("f", 1, "messages", messages=(Message("user", EXAMPLES["qa"]), Message("assistant", "4")))
        text = Record("f", 2, "text", text=EXAMPLES["qa"])
        assert strip_record(chat, "qa") is chat and strip_record(text, "qa") is text


class TestStripPrompt:
    @pytest.mark.parametrize("form", STRIPPERS)
    def test_a_users_prompt_in_the_trained_form_becomes_the_plain_question(self, form):
        assert strip_prompt(EXAMPLES[form], form) == ("Add 2 and 2." if form == "alpaca" else "What is 2+2?")

    def test_plain_prompts_and_runs_without_a_stripped_form_are_unchanged(self):
        assert strip_prompt("What is 2+2?", "qa") == "What is 2+2?"
        assert strip_prompt(EXAMPLES["qa"], None) == EXAMPLES["qa"]


class TestBakedForm:
    def test_the_most_common_form_and_its_count(self):
        records = [Record("f", i, "qa", prompt=EXAMPLES["qa"], response="4") for i in range(3)]
        records += [Record("f", 9, "qa", prompt=EXAMPLES["inst"], response="4"), Record("f", 10, "qa", prompt="Hi")]
        assert baked_form(records) == ("qa", 3)

    def test_none_when_no_prompt_is_in_a_known_form(self):
        assert baked_form([Record("f", 1, "qa", prompt="<|start_header_id|>user", response="x")]) == (None, 0)

    @pytest.mark.parametrize("form", STRIPPERS)
    def test_every_strippable_form_is_also_what_inspect_flags(self, form):
        """One copy of each marker: stats detects what strip removes."""
        record = Record("f", 1, "qa", prompt=EXAMPLES[form], response="4")
        assert baked_templates([record]).records == 1
        assert baked_templates([strip_record(record, form)]).records == 0


class TestStripTemplates:
    @staticmethod
    def records(baked: int, plain: int) -> list[Record]:
        return ([Record("f", i + 1, "qa", prompt=EXAMPLES["qa"].replace("2+2", str(i)), response="x")
                 for i in range(baked)]
                + [Record("f", baked + i + 1, "qa", prompt=f"Plain {i}?", response="x") for i in range(plain)])

    def test_auto_strips_a_form_most_records_carry_and_shows_one_before_and_after(self):
        records = self.records(baked=3, plain=1)
        out, stripped = strip_templates(records, "auto")
        assert [r.prompt for r in out] == ["What is 0?", "What is 1?", "What is 2?", "Plain 0?"]
        assert (stripped.form, stripped.carried, stripped.records, stripped.total) == ("qa", 3, 3, 4)
        assert (stripped.where, stripped.before, stripped.after) == ("f:1", records[0].prompt, "What is 0?")

    def test_auto_leaves_a_form_only_some_records_carry(self):
        records = self.records(baked=2, plain=2)
        out, stripped = strip_templates(records, "auto")
        assert out == records and (stripped.form, stripped.carried, stripped.records) == ("qa", 2, 0)

    def test_true_strips_however_few_and_false_never(self):
        records = self.records(baked=1, plain=3)
        assert strip_templates(records, True)[1].records == 1 and strip_templates(records, True)[1].setting == "true"
        out, stripped = strip_templates(self.records(baked=4, plain=0), False)
        assert stripped.records == 0 and all(r.prompt.startswith("### Question:") for r in out)
