"""load_records: one problem per bad record with file, line and field; fail lists them all, skip drops them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunesmith.config import DataConfig
from tunesmith.data import Record, check_record, load_records
from tunesmith.data.records import Message
from tunesmith.errors import DataError

SHAPES = Path(__file__).parents[2] / "examples" / "shapes"
BROKEN = SHAPES / "broken.jsonl"

EXAMPLES = [("alpaca.jsonl", "alpaca"), ("qa.csv", "qa"), ("prompt_completion.json", "prompt_completion"),
            ("input_output.jsonl", "input_output"), ("messages.jsonl", "messages"), ("sharegpt.json", "sharegpt"),
            ("text.jsonl", "text")]


@pytest.mark.parametrize("name,shape", EXAMPLES)
def test_every_shipped_example_loads_whole(name, shape):
    loaded = load_records(SHAPES / name, DataConfig())
    assert loaded.shape == shape
    assert 8 <= len(loaded.records) <= 20 and loaded.skipped == []
    assert f"{len(loaded.records)} of {len(loaded.records)} records" in loaded.reason
    assert all(r.shape == shape and r.file == str(SHAPES / name) for r in loaded.records)


def test_broken_file_gives_one_message_per_bad_record_with_line_and_field():
    with pytest.raises(DataError) as info:
        load_records(BROKEN, DataConfig())
    problems = info.value.problems
    assert [(p.line, p.field) for p in problems] == [
        (2, None),                    # invalid JSON
        (3, "messages[1].content"),   # missing field
        (4, "messages[1].content"),   # non-string field
        (5, "messages[1]"),           # empty response
        (7, "messages[1].role"),      # unknown role
        (8, "messages"),              # no assistant turn
        (9, None),                    # non-UTF-8 bytes
        (10, None),                   # not an object
        (11, "messages"),             # missing messages list
    ]
    kinds = ["invalid JSON", "missing", "expected a string, got a number", "empty assistant turn", "unknown role",
             "no assistant turn", "UTF-8", "expected a JSON object", "missing"]
    assert all(kind in p.message for kind, p in zip(kinds, problems))
    assert all(p.file == str(BROKEN) for p in problems)
    assert str(info.value).startswith("9 data problems:")


def test_skip_keeps_good_records_and_returns_the_skipped():
    loaded = load_records(BROKEN, DataConfig(on_error="skip"))
    assert [r.line for r in loaded.records] == [1, 6, 12]
    assert len(loaded.skipped) == 9 and loaded.shape == "messages"


def test_fail_lists_the_first_20_and_a_count(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"question": f"q{i}", "answer": ""}) + "\n" for i in range(25)))
    with pytest.raises(DataError) as info:
        load_records(path, DataConfig())
    message = str(info.value)
    assert len(info.value.problems) == 25
    assert f"{path}:20: answer: empty" in message and f"{path}:21:" not in message
    assert "... and 5 more problems" in message


def test_a_10mb_record_is_rejected_by_default(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"question": "q", "answer": "a" * 10_000_000}) + "\n"
                    + json.dumps({"question": "q", "answer": "a"}) + "\n")
    loaded = load_records(path, DataConfig(on_error="skip"))
    assert [r.line for r in loaded.records] == [2]
    assert "max_record_bytes" in loaded.skipped[0].message


def test_only_bad_records_is_an_error_even_when_skipping(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"question": "q", "answer": 1}\n{oops\n')
    with pytest.raises(DataError, match="2 data problems"):
        load_records(path, DataConfig(on_error="skip"))


def test_empty_file_is_an_error(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n")
    with pytest.raises(DataError, match="no records"):
        load_records(path, DataConfig())


class TestCheckRecord:
    @pytest.mark.parametrize("record,field,message", [
        (Record("f", 1, "alpaca", prompt=" ", response="r"), "instruction", "empty"),
        (Record("f", 1, "alpaca", prompt="p", response="\n"), "output", "empty"),
        (Record("f", 1, "text", text=""), "text", "empty"),
        (Record("f", 1, "messages", messages=(Message("user", "u"),)), "messages", "no assistant turn"),
        (Record("f", 1, "messages", messages=(Message("user", "u"), Message("assistant", "a"),
                                              Message("user", "again"))), "messages[2]", "ends with a user turn"),
        (Record("f", 1, "messages", messages=(Message("system", "s"), Message("assistant", "a"))), "messages",
         "no user turn"),
        (Record("f", 1, "sharegpt", messages=(Message("user", "u"), Message("assistant", ""))), "conversations[1]",
         "empty assistant turn"),
    ])
    def test_problems(self, record, field, message):
        (problem,) = check_record(record)
        assert problem.field == field and message in problem.message and problem.line == 1

    @pytest.mark.parametrize("record", [
        Record("f", 1, "qa", prompt="p", response="r"),
        Record("f", 1, "text", text="t"),
        Record("f", 1, "messages", messages=(Message("system", "s"), Message("user", "u"), Message("assistant", "a"))),
    ])
    def test_good_records_pass(self, record):
        assert check_record(record) == []
