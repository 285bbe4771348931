"""Tool-call records: OpenAI's `tools` / `tool_calls` / `tool` turns and sharegpt's `function_call` / `observation`,
converted (one test class per conversion), validated with file, line and field, and saved and read back."""

from __future__ import annotations

import json

import pytest

from tunesmith.config import DataConfig
from tunesmith.data.records import Message, Record, ToolCall, has_tool_calls, record_from_dict, record_to_dict
from tunesmith.data.shapes import (link_tool_results, openai_turn, sharegpt_turn, to_sharegpt_calls, to_tool_call,
                                   to_tools)
from tunesmith.data.tools import ParsedCall, parse_tool_calls
from tunesmith.data.validate import load_records, read_records, tool_problems
from tunesmith.errors import DataError

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city now",
                                            "parameters": {"type": "object",
                                                           "properties": {"city": {"type": "string"}},
                                                           "required": ["city"]}}}


def openai_row(arguments='{"city": "Oslo"}', answered="call_1", tools=(WEATHER,)) -> dict:
    return {"tools": list(tools), "messages": [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": arguments}}]},
        {"role": "tool", "tool_call_id": answered, "content": '{"temp_c": 21}'},
        {"role": "assistant", "content": "It is 21 C in Oslo."}]}


def sharegpt_row(call='{"name": "get_weather", "arguments": {"city": "Oslo"}}') -> dict:
    return {"tools": json.dumps([WEATHER["function"]]), "conversations": [
        {"from": "human", "value": "Weather in Oslo?"},
        {"from": "function_call", "value": call},
        {"from": "observation", "value": '{"temp_c": 21}'},
        {"from": "gpt", "value": "It is 21 C in Oslo."}]}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def data_error(call) -> DataError:
    with pytest.raises(DataError) as info:
        call()
    return info.value


class TestToTools:
    def test_openai_list_is_kept(self):
        assert to_tools([WEATHER], file="f", line=1) == (WEATHER,)

    def test_json_text_of_bare_functions_is_wrapped(self):
        assert to_tools(json.dumps([WEATHER["function"]]), file="f", line=1) == (WEATHER,)

    def test_absent_is_empty(self):
        assert to_tools(None, file="f", line=1) == () == to_tools("", file="f", line=1)

    @pytest.mark.parametrize("value,field,message", [
        ("[{", "tools", "not valid JSON"), ({"name": "x"}, "tools", "expected a list"),
        (["get_weather"], "tools[0]", "expected an object")])
    def test_problems_name_the_field(self, value, field, message):
        problem = data_error(lambda: to_tools(value, file="d.jsonl", line=4)).problems[0]
        assert (problem.file, problem.line, problem.field) == ("d.jsonl", 4, field)
        assert message in problem.message


class TestToToolCall:
    def test_object_arguments_become_json_text(self):
        call = to_tool_call({"id": "c1", "type": "function", "function": {"name": "f", "arguments": {"a": [1]}}},
                            file="f", line=1, field="m[1].tool_calls[0]", default_id="x")
        assert call == ToolCall("c1", "f", '{"a": [1]}')

    def test_text_arguments_are_kept_verbatim_and_a_missing_id_is_given(self):
        call = to_tool_call({"function": {"name": "f", "arguments": '{"a":1}'}}, file="f", line=1, field="x",
                            default_id="call_1_0")
        assert call == ToolCall("call_1_0", "f", '{"a":1}')

    @pytest.mark.parametrize("value,field", [("f()", "m[1].tool_calls[0]"),
                                             ({"id": "c"}, "m[1].tool_calls[0].function"),
                                             ({"function": {"arguments": "{}"}}, "m[1].tool_calls[0].function.name")])
    def test_problems_name_the_field(self, value, field):
        error = data_error(lambda: to_tool_call(value, file="f", line=2, field="m[1].tool_calls[0]", default_id="x"))
        assert error.problems[0].field == field


class TestToSharegptCalls:
    def test_one_call(self):
        assert to_sharegpt_calls('{"name": "f", "arguments": {"a": 1}}', file="f", line=1, field="c[1].value",
                                 turn=1) == (ToolCall("call_1_0", "f", '{"a": 1}'),)

    def test_parallel_calls_get_their_own_ids(self):
        calls = to_sharegpt_calls('[{"name": "f", "arguments": {}}, {"name": "g", "arguments": {}}]', file="f",
                                  line=1, field="c[3].value", turn=3)
        assert [(c.id, c.name) for c in calls] == [("call_3_0", "f"), ("call_3_1", "g")]

    def test_broken_json_names_the_turn(self):
        problem = data_error(lambda: to_sharegpt_calls("get_weather(Oslo)", file="s.json", line=7,
                                                       field="conversations[1].value", turn=1)).problems[0]
        assert (problem.line, problem.field) == (7, "conversations[1].value")
        assert "not valid JSON" in problem.message


class TestLinkToolResults:
    def test_results_without_ids_answer_calls_in_order(self):
        call = Message("assistant", "", (ToolCall("a", "f", "{}"), ToolCall("b", "g", "{}")))
        linked = link_tool_results((call, Message("tool", "1"), Message("tool", "2")))
        assert [m.tool_call_id for m in linked[1:]] == ["a", "b"]

    def test_given_ids_are_kept_and_a_result_with_no_call_left_stays_unlinked(self):
        call = Message("assistant", "", (ToolCall("a", "f", "{}"),))
        linked = link_tool_results((call, Message("tool", "1", tool_call_id="a"), Message("tool", "2")))
        assert [m.tool_call_id for m in linked[1:]] == ["a", None]


class TestOpenaiTurn:
    def test_call_with_null_content(self):
        turn = openai_row()["messages"][1]
        message = openai_turn(turn, file="f", line=1, where="messages[1]", index=1)
        assert message == Message("assistant", "", (ToolCall("call_1", "get_weather", '{"city": "Oslo"}'),))

    def test_tool_result(self):
        message = openai_turn(openai_row()["messages"][2], file="f", line=1, where="messages[2]", index=2)
        assert message == Message("tool", '{"temp_c": 21}', tool_call_id="call_1")

    def test_null_content_without_calls_is_missing(self):
        problem = data_error(lambda: openai_turn({"role": "assistant", "content": None}, file="f", line=3,
                                                 where="messages[1]", index=1)).problems[0]
        assert (problem.field, problem.message) == ("messages[1].content", "missing; expected a string")


class TestSharegptTurn:
    def test_function_call_is_an_assistant_call(self):
        message = sharegpt_turn(sharegpt_row()["conversations"][1], file="f", line=1, where="c[1]", index=1)
        assert message == Message("assistant", "", (ToolCall("call_1_0", "get_weather", '{"city": "Oslo"}'),))

    def test_observation_is_a_tool_turn(self):
        assert sharegpt_turn({"from": "observation", "value": "21"}, file="f", line=1, where="c[2]",
                             index=2) == Message("tool", "21")


class TestLoading:
    def test_openai_file_loads_with_tools_and_calls(self, tmp_path):
        loaded = load_records(write_jsonl(tmp_path / "tools.jsonl", [openai_row()] * 3), DataConfig())
        record = loaded.records[0]
        assert (loaded.shape, len(loaded.records), loaded.skipped) == ("messages", 3, [])
        assert record.tools == (WEATHER,) and has_tool_calls(record)
        assert [m.role for m in record.messages] == ["user", "assistant", "tool", "assistant"]

    def test_sharegpt_file_loads_and_links_observations(self, tmp_path):
        record = load_records(write_jsonl(tmp_path / "s.jsonl", [sharegpt_row()]), DataConfig()).records[0]
        assert record.shape == "sharegpt" and record.tools == (WEATHER,)
        assert record.messages[2] == Message("tool", '{"temp_c": 21}', tool_call_id="call_1_0")

    def test_saved_record_reads_back_equal(self, tmp_path):
        record = load_records(write_jsonl(tmp_path / "t.jsonl", [openai_row()]), DataConfig()).records[0]
        saved = json.loads(json.dumps(record_to_dict(record)))
        assert record_from_dict(saved) == record and record_from_dict(saved).tools == record.tools

    def test_plain_records_save_as_before(self):
        record = Record("f", 1, "messages", messages=(Message("user", "Hi"), Message("assistant", "Yo")))
        assert record_to_dict(record)["messages"] == [{"role": "user", "content": "Hi"},
                                                     {"role": "assistant", "content": "Yo"}]
        assert not has_tool_calls(record)

    @pytest.mark.parametrize("row,field,message", [
        (openai_row(arguments="city=Oslo"), "messages[1].tool_calls[0].function.arguments", "not valid JSON"),
        (openai_row(arguments='["Oslo"]'), "messages[1].tool_calls[0].function.arguments", "JSON object"),
        (openai_row(answered="call_9"), "messages[2].tool_call_id", "'call_9' answers no earlier call"),
        (openai_row(tools=[{"type": "function", "function": {"name": "get weather!"}}]),
         "tools[0].function.name", "expected a function name"),
        (openai_row(tools=[{"type": "function", "function": {"name": "now", "parameters": []}}]),
         "tools[0].function.parameters", "JSON schema object"),
        (openai_row(tools=[{"type": "retrieval"}]), "tools[0].type", "not supported"),
        (openai_row(tools=[{"type": "function", "function": {"name": "now"}}]), "messages[1].tool_calls[0].function.name",
         "not among the record's tools (now)"),
        (sharegpt_row(call='{"name": "get_weather", "arguments": "Oslo"}'), "conversations[1].value", "not valid JSON"),
    ])
    def test_problems_name_file_line_and_field(self, tmp_path, row, field, message):
        path = write_jsonl(tmp_path / "bad.jsonl", [openai_row() if "messages" in row else sharegpt_row(), row])
        loaded = read_records(path, DataConfig())
        assert len(loaded.records) == 1 and len(loaded.skipped) == 1
        problem = loaded.skipped[0]
        assert (problem.file, problem.line, problem.field) == (str(path), 2, field)
        assert message in problem.message

    def test_a_tool_message_without_its_call_id(self):
        record = Record("f", 5, "messages", messages=(Message("user", "Hi"), Message("tool", "21"),
                                                      Message("assistant", "Warm.")))
        assert [(p.field, p.message[:7]) for p in tool_problems(record)] == [("messages[1].tool_call_id", "missing")]

    def test_a_record_ending_in_a_call_is_valid(self, tmp_path):
        row = openai_row()
        row["messages"] = row["messages"][:2]
        assert len(load_records(write_jsonl(tmp_path / "c.jsonl", [row]), DataConfig()).records) == 1


class TestParseToolCalls:
    def test_blocks_become_calls_and_the_rest_content(self):
        text = ('Checking.\n<tool_call>\n{"name": "a", "arguments": {"x": 1}}\n</tool_call>\n'
                '<tool_call>\n{"name": "b", "arguments": "{\\"y\\": 2}"}\n</tool_call>')
        assert parse_tool_calls(text) == ("Checking.", [ParsedCall("a", '{"x": 1}'), ParsedCall("b", '{"y": 2}')])

    def test_an_unclosed_last_block_counts(self):
        assert parse_tool_calls('<tool_call>\n{"name": "a", "arguments": {}}') == ("", [ParsedCall("a", "{}")])

    @pytest.mark.parametrize("text", ["<tool_call>not json</tool_call>", '<tool_call>{"arguments": {}}</tool_call>',
                                      '<tool_call>{"name": "a", "arguments": [1]}</tool_call>', "plain answer"])
    def test_anything_else_stays_text(self, text):
        assert parse_tool_calls(text) == (text, [])


def test_the_example_file_is_valid():
    from pathlib import Path

    loaded = load_records(Path(__file__).parents[2] / "examples" / "shapes" / "tools.jsonl", DataConfig(on_error="fail"))
    assert loaded.shape == "messages" and len(loaded.records) == 8
    assert sum(has_tool_calls(r) for r in loaded.records) == 8
    assert sum(bool(m.tool_calls) for r in loaded.records for m in r.messages) == 7
