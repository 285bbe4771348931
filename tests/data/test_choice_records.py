"""Multiple-choice records: the flat, ARC native and Hugging Face ARC shapes, what `answer` means (the record's
own labels first), and errors that name file, line, field and the valid values."""

from __future__ import annotations


import pytest

from tunesmith.data import choices as mc
from tunesmith.errors import DataError

from mc_files import hf_arc, native_arc, write_jsonl

SKY = ("Which colour is the sky on a clear day?", ["blue", "a rather dark shade of green"], "1", ["1", "2"])


class TestParse:
    def test_native_hf_and_flat_shapes_agree(self):
        q, choices, key, labels = SKY
        expected = mc.ChoiceItem(q, tuple(choices), 0)
        for data in (native_arc(q, choices, key, labels), hf_arc(q, choices, key, labels),
                     {"question": q, "choices": choices, "answer": 0},
                     {"question": q, "choices": choices, "answer": "blue"}):
            item = mc.parse_choice_item(data)
            assert (item.question, item.choices, item.answer) == (expected.question, expected.choices, 0)

    def test_letter_answer_for_plain_choices(self):
        assert mc.parse_choice_item({"question": "q", "choices": ["x", "y", "z"], "answer": "C"}).answer == 2

    @pytest.mark.parametrize("data, field", [
        ({"question": "q", "choices": ["x", "y"], "answer": 2}, "answer"),
        ({"question": "q", "choices": ["x", "y"], "answer": "nope"}, "answer"),
        ({"question": "q", "choices": ["only one"], "answer": 0}, "choices"),
        ({"question": "", "choices": ["x", "y"], "answer": 0}, "question"),
        ({"question": {"stem": "q", "choices": [{"text": "x", "label": "A"}, {"text": "y", "label": "B"}]},
          "answerKey": "E"}, "answerKey"),
        ({"question": "q", "choices": ["x", "y"], "labels": ["1"], "answer": "1"}, "labels"),
    ])
    def test_bad_records_name_file_line_and_field(self, data, field):
        with pytest.raises(DataError) as info:
            mc.parse_choice_item(data, "mc.jsonl", 7)
        assert f"mc.jsonl:7: {field}:" in str(info.value)

    def test_file_lists_every_bad_line(self, tmp_path):
        path = write_jsonl(tmp_path / "mc.jsonl", [{"question": "q", "choices": ["x", "y"], "answer": 0},
                                              {"question": "q", "choices": ["x"], "answer": 0},
                                              {"question": "q", "choices": ["x", "y"], "answer": 9}])
        with pytest.raises(DataError) as info:
            mc.load_choice_items(path)
        assert "mc.jsonl:2" in str(info.value) and "mc.jsonl:3" in str(info.value)


class TestRecordLabels:
    """A record that names its labels says what `answer` means: with labels 1-4, "3" is the third choice."""

    CHOICES = ["Mercury", "Venus", "Earth", "Mars"]

    @pytest.mark.parametrize("answer", ["3", 3, " 3 ", "Earth"])
    def test_flat_record_with_numeric_labels(self, answer):
        data = {"question": "Third planet?", "choices": self.CHOICES, "labels": ["1", "2", "3", "4"],
                "answer": answer}
        assert mc.parse_choice_item(data).answer == 2

    @pytest.mark.parametrize("shape", [hf_arc, native_arc])
    def test_arc_numeric_labels(self, shape):
        data = shape("Third planet?", self.CHOICES, "3", ["1", "2", "3", "4"])
        assert mc.parse_choice_item(data).answer == 2

    def test_own_letter_labels(self):
        data = {"question": "q", "choices": ["x", "y", "z"], "labels": ["a", "b", "c"], "answer": "c"}
        assert mc.parse_choice_item(data).answer == 2

    def test_without_labels_an_integer_is_a_0_based_index(self):
        assert mc.parse_choice_item({"question": "q", "choices": self.CHOICES, "answer": 3}).answer == 3

    def test_a_bad_answer_names_the_record_labels(self):
        data = {"question": "Third planet?", "choices": self.CHOICES, "labels": ["1", "2", "3", "4"], "answer": "7"}
        with pytest.raises(DataError) as info:
            mc.parse_choice_item(data, "planets.jsonl", 4)
        message = str(info.value)
        assert "planets.jsonl:4: answer: '7'" in message
        assert "a label (1, 2, 3, 4)" in message and "a choice index (0-3)" in message

    def test_a_bad_answer_without_labels_lists_the_letters(self):
        with pytest.raises(DataError, match=r"mc.jsonl:2: answer: 'E' is not a choice index \(0-3\), a label "
                                            r"\(A, B, C, D\)"):
            mc.parse_choice_item({"question": "q", "choices": self.CHOICES, "answer": "E"}, "mc.jsonl", 2)

    def test_file_with_numeric_labels_loads(self, tmp_path):
        path = write_jsonl(tmp_path / "mc.jsonl", [{"question": f"q{i}", "choices": self.CHOICES,
                                               "labels": ["1", "2", "3", "4"], "answer": str(i + 1)}
                                              for i in range(4)])
        items = mc.load_choice_items(path)
        assert [item.answer for item in items] == [0, 1, 2, 3]
        assert items[2].where.endswith("mc.jsonl:3")
