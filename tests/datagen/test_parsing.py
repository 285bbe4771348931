"""Parsers of teacher replies: numbered self-instruct tasks, question/answer JSON, grading verdicts."""

from __future__ import annotations

import pytest

from tunesmith.datagen.parsing import Task, parse_grades, parse_numbered_tasks, parse_qa_pairs
from tunesmith.datagen.self_instruct import self_instruct_prompt


class TestParseNumberedTasks:
    def test_messy_teacher_text(self):
        text = (
            "Sure! Here are some new tasks:\n\n"
            "###\n"
            "4. **Instruction:** Convert the temperature to Celsius.\n"
            "4. **Input:** 212 °F\n"
            "4. **Output:** 100 °C\n"
            "###\n"
            "5. Instruction: Write a haiku about   autumn\n   leaves.\n"
            "5. Input:\n<noinput>\n"
            "5. Output:\nRed leaves drift and fall\nthe path hides under their gold\nwind keeps the count\n"
            "###\n"
            "6) instruction: Name a prime number.\n"
            "6) output: 7\n\n###\n"
            "7. Instruction: This one lost its output.\n7. Input: something\n"
            "###\n"
            "8. Output: an output without an instruction\n"
            "9. Instruction:\n9. Output: an empty instruction\n")
        tasks, malformed = parse_numbered_tasks(text)
        assert tasks == [
            Task("Convert the temperature to Celsius.", "212 °F", "100 °C"),
            Task("Write a haiku about autumn leaves.", "",
                 "Red leaves drift and fall\nthe path hides under their gold\nwind keeps the count"),
            Task("Name a prime number.", "", "7"),
        ]
        assert malformed == 3

    @pytest.mark.parametrize("text", ["", "I cannot help with that.", "{}[]"])
    def test_reply_without_tasks_is_one_malformed_item(self, text):
        assert parse_numbered_tasks(text) == ([], 1)

    def test_prompt_examples_round_trip_through_the_parser(self):
        examples = [Task("Add the numbers.", "2, 3", "5"), Task("Name a colour.", "", "Blue")]
        prompt = self_instruct_prompt(examples, 4)
        assert "Now write tasks 3 to 6" in prompt
        assert parse_numbered_tasks(prompt.split("###", 1)[1]) == (examples, 0)


class TestParseQaPairs:
    def test_fenced_json_with_prose_and_bad_items(self):
        text = ('Here you go [as requested]:\n```json\n[{"question": "What is   the range?", "answer": "0.5-1.7 L."},'
                ' {"Question": "Who?", "Answer": "Mira."}, {"question": "", "answer": "x"}, "oops"]\n```\nThanks!')
        assert parse_qa_pairs(text) == ([("What is the range?", "0.5-1.7 L."), ("Who?", "Mira.")], 2)

    def test_object_holding_the_list_and_bare_json(self):
        assert parse_qa_pairs('{"pairs": [{"q": "A?", "a": "B."}]}') == ([("A?", "B.")], 0)
        assert parse_qa_pairs('{"question": "A?", "answer": "B."}') == ([("A?", "B.")], 0)

    @pytest.mark.parametrize("text", ["no json here", '```json\n[{"question": "unterminated\n```', "42"])
    def test_garbage_is_one_malformed_item(self, text):
        assert parse_qa_pairs(text) == ([], 1)

    def test_grades_by_number_by_position_and_missing(self):
        assert parse_grades('```\n[{"pair": 3, "grounded": "no"}, {"pair": 1, "grounded": true}]\n```', 3) == \
            [True, None, False]
        assert parse_grades("[true, false]", 3) == [True, False, None]
        assert parse_grades("I think they are all fine", 2) == [None, None]
