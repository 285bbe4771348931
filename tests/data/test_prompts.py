"""Prompts: whatever a caller holds becomes a record to answer; prompt files name every bad line."""

from __future__ import annotations

import pytest

from tunesmith.data.prompts import as_prompt_record, prompt_record, read_prompts
from tunesmith.data.records import Message, Record
from tunesmith.errors import DataError


class TestAsPromptRecord:
    def test_bare_prompt_becomes_a_user_turn(self):
        record = as_prompt_record("Hi")
        assert record.messages == (Message("user", "Hi"), Message("assistant", ""))

    def test_dict_messages(self):
        record = as_prompt_record([{"role": "system", "content": "S"}, {"role": "user", "content": "U"}])
        assert [m.role for m in record.messages] == ["system", "user", "assistant"]

    def test_record_passes_through(self):
        record = Record("f", 1, "qa", prompt="Q?")
        assert as_prompt_record(record) is record

    def test_conversation_must_end_with_the_user(self):
        with pytest.raises(ValueError, match="last message"):
            as_prompt_record([{"role": "user", "content": "U"}, {"role": "assistant", "content": "A"}])


class TestPromptRecord:
    @pytest.mark.parametrize("row, prompt, input", [
        ({"prompt": "A?"}, "A?", ""),
        ({"instruction": "Add", "input": "2+2"}, "Add", "2+2"),
        ({"question": "Why?", "system": "Be brief."}, "Why?", ""),
    ])
    def test_prompt_shapes(self, row, prompt, input):
        record = prompt_record(row, "p.jsonl", 3)
        assert (record.prompt, record.input, record.file, record.line) == (prompt, input, "p.jsonl", 3)

    @pytest.mark.parametrize("row, field", [
        ([1, 2], None),
        ({"prompt": 3}, "prompt"),
        ({"answer": "x"}, None),
        ({"prompt": "A", "input": 5}, "input"),
        ({"messages": [{"role": "assistant", "content": "x"}]}, "messages"),
        ({"messages": []}, "messages"),
    ])
    def test_bad_rows_name_their_field(self, row, field):
        with pytest.raises(DataError) as info:
            prompt_record(row, "p.jsonl", 2)
        assert [(p.line, p.field) for p in info.value.problems] == [(2, field)]


class TestReadPrompts:
    def test_reads_prompt_shapes(self, tmp_path):
        path = tmp_path / "p.jsonl"
        path.write_text('{"prompt": "A?"}\n\n{"instruction": "Add", "input": "2+2"}\n'
                        '{"messages": [{"role": "user", "content": "Hi"}]}\n')
        rows = read_prompts(path)
        assert [r.prompt for _, r in rows[:2]] == ["A?", "Add"] and rows[1][1].input == "2+2"
        assert rows[2][1].messages[-1] == Message("assistant", "")
        assert [r.line for _, r in rows] == [1, 3, 4]
        assert rows[0][0] == {"prompt": "A?"}  # the row as written, for the output file

    def test_every_bad_line_is_named(self, tmp_path):
        path = tmp_path / "p.jsonl"
        path.write_text('{"prompt": 3}\n{oops\n{"messages": [{"role": "assistant", "content": "x"}]}\n')
        with pytest.raises(DataError) as info:
            read_prompts(path)
        assert [(p.line, p.field) for p in info.value.problems] == [(1, "prompt"), (2, None), (3, "messages")]

    @pytest.mark.parametrize("content, message", [(None, "file not found"), (b"\n\n", "no prompts"),
                                                  (b"\xff\xfe{", "not UTF-8")])
    def test_unusable_files(self, tmp_path, content, message):
        path = tmp_path / "p.jsonl"
        if content is not None:
            path.write_bytes(content)
        with pytest.raises(DataError, match=message):
            read_prompts(path)
