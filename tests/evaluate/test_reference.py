"""The reference a test record is scored against, including a conversation that ends in a tool call."""

from tunesmith.data import Message, Record
from tunesmith.data.records import ToolCall
from tunesmith.data.tools import ParsedCall, parse_tool_calls
from tunesmith.evaluate.run import reference_of


def chat(*messages: Message) -> Record:
    return Record("t.jsonl", 1, "messages", messages=messages)


def test_an_answer_is_its_own_reference():
    assert reference_of(Record("t.jsonl", 1, "qa", prompt="2+2?", response="4")) == "4"
    assert reference_of(chat(Message("user", "Hi"), Message("assistant", "Hello."))) == "Hello."
    assert reference_of(chat(Message("user", "Hi"))) == ""


def test_a_tool_call_is_the_reference_the_model_writes_and_serve_reads_back():
    """The calls as the shipped template's <tool_call> blocks, after the turn's text: parsing them gives the calls."""
    calls = (ToolCall("c1", "weather", '{"city": "Oslo"}'), ToolCall("c2", "time", '{"zone": "CET"}'))
    only_calls = reference_of(chat(Message("user", "Weather and time in Oslo?"), Message("assistant", "", calls)))
    assert only_calls.startswith("<tool_call>\n")
    assert parse_tool_calls(only_calls) == ("", [ParsedCall("weather", '{"city": "Oslo"}'),
                                                 ParsedCall("time", '{"zone": "CET"}')])
    with_text = reference_of(chat(Message("user", "Oslo?"), Message("assistant", "Let me look.", calls[:1])))
    assert parse_tool_calls(with_text) == ("Let me look.", [ParsedCall("weather", '{"city": "Oslo"}')])
