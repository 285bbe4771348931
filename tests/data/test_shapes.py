"""Shape converters (one class per converter, parametrized over shapes) and shape detection over all rows."""

from __future__ import annotations

import json

import pytest

from tunesmith.config import DataConfig
from tunesmith.data.records import Message
from tunesmith.data.shapes import (CONVERTERS, DEFAULT_COLUMNS, Columns, columns_for, convert, detect_shape,
                                   to_messages, to_pair, to_sharegpt, to_text)
from tunesmith.errors import DataError


def _convert(row, shape, data=None):
    return convert(row, shape, columns_for(shape, data or DataConfig()), "f.jsonl", 7)


def _problem(row, shape, data=None):
    with pytest.raises(DataError) as info:
        _convert(row, shape, data)
    (problem,) = info.value.problems
    assert (problem.file, problem.line) == ("f.jsonl", 7)
    return problem


class TestToPair:
    @pytest.mark.parametrize("shape,row", [
        ("alpaca", {"instruction": "Add.", "input": "2 and 2", "output": "4"}),
        ("qa", {"question": "Add.", "input": "ignored", "answer": "4"}),
        ("prompt_completion", {"prompt": "Add.", "completion": "4"}),
        ("input_output", {"input": "Add.", "output": "4"}),
    ])
    def test_default_columns(self, shape, row):
        record = _convert(row, shape)
        assert (record.shape, record.prompt, record.response) == (shape, "Add.", "4")
        assert record.input == ("2 and 2" if shape == "alpaca" else "")
        assert (record.file, record.line, record.kind) == ("f.jsonl", 7, "pair")

    def test_system_column_is_optional(self):
        assert _convert({"question": "q", "answer": "a", "system": "Be terse."}, "qa").system == "Be terse."
        assert _convert({"question": "q", "answer": "a", "system": None}, "qa").system is None

    def test_explicit_keys_define_the_columns(self):
        data = DataConfig(prompt_key="q", input_key="ctx", response_key="a", system_key="sys")
        record = _convert({"q": "Q", "ctx": "C", "a": "A", "sys": "S"}, "prompt_completion", data)
        assert (record.prompt, record.input, record.response, record.system) == ("Q", "C", "A", "S")

    @pytest.mark.parametrize("row,field,message", [
        ({"instruction": "x"}, "output", "missing"),
        ({"instruction": "x", "output": None}, "output", "missing"),
        ({"instruction": "x", "output": 4}, "output", "got a number 4"),
        ({"instruction": ["x"], "output": "y"}, "instruction", "got a list"),
        ({"instruction": "x", "output": "y", "input": {"k": 1}}, "input", "got an object"),
    ])
    def test_bad_fields_name_field_and_expectation(self, row, field, message):
        problem = _problem(row, "alpaca")
        assert problem.field == field and message in problem.message and "string" in problem.message

    def test_unpaired_surrogate_from_a_json_escape_is_a_problem(self):
        problem = _problem(json.loads('{"instruction": "x", "output": "bad \\ud800 text"}'), "alpaca")
        assert problem.field == "output" and "\\ud800 at character 5" in problem.message

    def test_input_does_not_mutate_the_row(self):
        row = {"instruction": "x", "output": "y"}
        to_pair(row, DEFAULT_COLUMNS["alpaca"], shape="alpaca", file="f", line=1)
        assert row == {"instruction": "x", "output": "y"}


class TestToMessages:
    @pytest.mark.parametrize("roles", [["user", "assistant"], ["system", "user", "assistant"],
                                       ["user", "assistant", "user", "assistant"]])
    def test_roles_are_kept(self, roles):
        row = {"messages": [{"role": r, "content": f"{r} text", "name": "extra keys ignored"} for r in roles]}
        record = _convert(row, "messages")
        assert record.messages == tuple(Message(r, f"{r} text") for r in roles)
        assert record.kind == "chat"

    def test_system_column_becomes_the_first_message(self):
        row = {"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}], "system": "S"}
        assert _convert(row, "messages").messages[0] == Message("system", "S")

    @pytest.mark.parametrize("row,field,message", [
        ({"messages": "hello"}, "messages", "expected a list"),
        ({"messages": [{"role": "function", "content": "x"}]}, "messages[0].role", "unknown role 'function'"),
        ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant"}]}, "messages[1].content", "missing"),
        ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, "messages[0].content", "got a list"),
        ({"messages": ["user: hi"]}, "messages[0]", "expected an object"),
    ])
    def test_problems_name_the_turn(self, row, field, message):
        problem = _problem(row, "messages")
        assert problem.field == field and message in problem.message

    def test_unknown_role_lists_valid_ones(self):
        assert "system, user, assistant" in _problem({"messages": [{"role": "bot", "content": "x"}]},
                                                     "messages").message


class TestToSharegpt:
    @pytest.mark.parametrize("source,role", [("human", "user"), ("gpt", "assistant"), ("system", "system"),
                                             ("user", "user"), ("assistant", "assistant")])
    def test_roles_are_mapped(self, source, role):
        record = _convert({"conversations": [{"from": source, "value": "v"}]}, "sharegpt")
        assert record.messages == (Message(role, "v"),)

    def test_unknown_from_is_a_problem(self):
        problem = _problem({"conversations": [{"from": "bing", "value": "v"}]}, "sharegpt")
        assert problem.field == "conversations[0].from" and "human" in problem.message

    def test_custom_messages_key(self):
        row = {"chat": [{"from": "human", "value": "h"}, {"from": "gpt", "value": "g"}]}
        record = _convert(row, "sharegpt", DataConfig(messages_key="chat"))
        assert [m.role for m in record.messages] == ["user", "assistant"]


class TestToText:
    @pytest.mark.parametrize("row,key", [({"text": "Once."}, None), ({"body": "Once."}, "body")])
    def test_text(self, row, key):
        record = _convert(row, "text", DataConfig(text_key=key))
        assert (record.text, record.kind) == ("Once.", "text")

    def test_non_string_text(self):
        assert _problem({"text": 3.5}, "text").field == "text"


def test_registry_covers_every_configurable_shape():
    from typing import get_args

    from tunesmith.config import Shape

    assert set(CONVERTERS) == set(get_args(Shape)) - {"auto"}
    assert set(DEFAULT_COLUMNS) == set(CONVERTERS)
    assert CONVERTERS["messages"] is to_messages and CONVERTERS["sharegpt"] is to_sharegpt
    assert CONVERTERS["text"] is to_text


def test_unknown_shape_name_lists_valid_ones():
    with pytest.raises(DataError, match="valid shapes: alpaca, qa, prompt_completion"):
        convert({}, "llama", Columns(), "f", 1)


def test_keys_for_other_shapes_are_ignored():
    assert columns_for("alpaca", DataConfig(text_key="body", messages_key="m")) == DEFAULT_COLUMNS["alpaca"]
    assert columns_for("text", DataConfig(prompt_key="q")) == DEFAULT_COLUMNS["text"]


class TestDetectShape:
    @pytest.mark.parametrize("row,shape", [
        ({"instruction": "i", "input": "", "output": "o"}, "alpaca"),
        ({"instruction": "i", "output": "o"}, "alpaca"),
        ({"question": "q", "answer": "a"}, "qa"),
        ({"prompt": "p", "completion": "c"}, "prompt_completion"),
        ({"input": "i", "output": "o"}, "input_output"),
        ({"messages": [{"role": "user", "content": "u"}]}, "messages"),
        ({"conversations": [{"from": "human", "value": "h"}]}, "sharegpt"),
        ({"text": "t"}, "text"),
    ])
    def test_each_shape(self, row, shape):
        detected, reason = detect_shape([row, row], DataConfig())
        assert detected == shape
        assert reason.startswith("2 of 2 records have")

    def test_all_rows_count_not_the_first(self):
        rows = [{"text": "t"}] + [{"question": "q", "answer": "a"}] * 5
        shape, reason = detect_shape(rows, DataConfig())
        assert shape == "qa"
        assert reason == "5 of 6 records have question/answer keys; the other 1 do not and are reported as problems"

    def test_explicit_keys_pick_the_shape_they_fit_naturally(self):
        rows = [{"question": "q", "answer": "a", "context": "c"}]
        assert detect_shape(rows, DataConfig(input_key="context"))[0] == "qa"

    def test_explicit_messages_key_with_sharegpt_turns(self):
        rows = [{"dialog": [{"from": "human", "value": "h"}]}]
        assert detect_shape(rows, DataConfig(messages_key="dialog"))[0] == "sharegpt"

    def test_explicit_shape_wins(self):
        assert detect_shape([{"text": "t"}], DataConfig(shape="qa")) == ("qa", "shape set explicitly (data.shape=qa)")

    def test_nothing_fits_lists_the_keys_found(self):
        with pytest.raises(DataError) as info:
            detect_shape([{"foo": 1, "bar": 2}, {"foo": 3}], DataConfig(), file="x.jsonl")
        message = str(info.value)
        assert "x.jsonl" in message and "'foo' (2)" in message and "'bar' (1)" in message
        assert "--prompt-key" in message
