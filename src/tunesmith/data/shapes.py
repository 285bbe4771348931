"""Shapes: detect how a file's rows are laid out and turn each row into a canonical `Record`.

One small pure function per kind of shape, a column map per shape (which the explicit `*_key` options of
`DataConfig` override), and `CONVERTERS`, a plain dict from shape name to converter. A converter raises
`DataError` naming file, line and field for the first structural problem of a row (missing field, wrong
type, unknown role); content checks (empty answer, no assistant turn) live in `validate.py`.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any, Callable

from tunesmith.config import DataConfig
from tunesmith.data.records import ROLES, Message, Record, ToolCall
from tunesmith.errors import DataError


@dataclass(frozen=True)
class Columns:
    """Which column of a row holds each part of a record (None: this shape has no such part)."""

    prompt: str | None = None
    input: str | None = None
    response: str | None = None
    system: str | None = None
    messages: str | None = None
    text: str | None = None
    tools: str | None = None
    """The functions a conversation may call (OpenAI's `tools`; a JSON string of them in LLaMA-Factory's sharegpt)."""


DEFAULT_COLUMNS: dict[str, Columns] = {
    "alpaca": Columns(prompt="instruction", input="input", response="output", system="system"),
    "qa": Columns(prompt="question", response="answer", system="system"),
    "prompt_completion": Columns(prompt="prompt", response="completion", system="system"),
    "input_output": Columns(prompt="input", response="output", system="system"),
    "messages": Columns(messages="messages", system="system", tools="tools"),
    "sharegpt": Columns(messages="conversations", system="system", tools="tools"),
    "text": Columns(text="text"),
}
"""Each shape's usual column names; `input` and `system` are optional, the others required."""

SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system", "function_call": "assistant", "observation": "tool"}
"""ShareGPT `from` values and the chat role each becomes (`function_call` is an assistant turn calling tools, as
LLaMA-Factory writes it; `observation` is a tool's result)."""


def columns_for(shape: str, data: DataConfig) -> Columns:
    """The shape's default columns with the explicit keys of `data` put in their place.

    >>> columns_for("qa", DataConfig(prompt_key="q"))
    Columns(prompt='q', input=None, response='answer', system='system', messages=None, text=None, tools=None)
    """
    columns = DEFAULT_COLUMNS[check_shape_name(shape)]
    explicit = {"prompt": data.prompt_key, "input": data.input_key, "response": data.response_key,
                "system": data.system_key, "messages": data.messages_key, "text": data.text_key}
    # A key only applies to shapes that have that part: text_key means nothing to an alpaca file.
    parts = _PARTS[_kind(columns)]
    return replace(columns, **{part: key for part, key in explicit.items() if key and part in parts})


_PARTS = {"pair": ("prompt", "input", "response", "system"), "chat": ("messages", "system", "tools"),
          "text": ("text",)}


def _kind(columns: Columns) -> str:
    return "chat" if columns.messages else "text" if columns.text else "pair"


def check_shape_name(shape: str) -> str:
    """Raises DataError listing the valid shapes when `shape` is not one."""
    if shape not in CONVERTERS:
        raise DataError(f"unknown data shape {shape!r}; valid shapes: {', '.join(CONVERTERS)} (or auto)")
    return shape


def _describe(value: Any) -> str:
    text = repr(value)
    text = text if len(text) <= 40 else text[:37] + "..."
    kind = {bool: "a boolean", int: "a number", float: "a number", list: "a list", dict: "an object",
            type(None): "null"}.get(type(value), type(value).__name__)
    return f"{kind} {text}" if kind not in ("a list", "an object", "null") else kind


_SURROGATE = re.compile("[\ud800-\udfff]")


def _string(row: dict, key: str, file: str, line: int, field: str | None = None) -> str:
    """The string at `row[key]`; a missing or non-string value is a DataError naming the field."""
    if key not in row or row[key] is None:
        raise DataError("missing; expected a string", file=file, line=line, field=field or key)
    value = row[key]
    if not isinstance(value, str):
        raise DataError(f"expected a string, got {_describe(value)}", file=file, line=line, field=field or key)
    bad = _SURROGATE.search(value)
    if bad:
        # Legal as a JSON escape ("\ud800") but not Unicode text: it could not be tokenized or saved as UTF-8.
        raise DataError(f"not valid Unicode text: unpaired surrogate \\u{ord(bad.group(0)):04x} at character "
                        f"{bad.start() + 1}", file=file, line=line, field=field or key)
    return value


def _optional_string(row: dict, key: str | None, file: str, line: int) -> str | None:
    if key is None or row.get(key) is None:
        return None
    return _string(row, key, file, line)


def to_pair(row: dict, columns: Columns, *, shape: str, file: str, line: int) -> Record:
    """alpaca, qa, prompt_completion and input_output rows: they differ only in their column names.

    >>> to_pair({"question": "2+2?", "answer": "4"}, DEFAULT_COLUMNS["qa"], shape="qa", file="f", line=1)
    Record(file='f', line=1, shape='qa', prompt='2+2?', input='', response='4', system=None, messages=(), text=None)
    """
    return Record(file, line, shape,
                  prompt=_string(row, columns.prompt, file, line),
                  input=_optional_string(row, columns.input, file, line) or "",
                  response=_string(row, columns.response, file, line),
                  system=_optional_string(row, columns.system, file, line))


def _json_text(value: Any, file: str, line: int, field: str) -> Any:
    """A value that may arrive as JSON text (LLaMA-Factory writes tools and calls as strings), parsed."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as e:
        raise DataError(f"not valid JSON: {e.msg} at character {e.pos + 1}", file=file, line=line,
                        field=field) from None


def to_tools(value: Any, *, file: str, line: int, field: str = "tools") -> tuple[dict, ...]:
    """A record's `tools` (a list, or JSON text of one) in OpenAI's form; a bare function schema
    (`{"name", "parameters"}`, as LLaMA-Factory writes it) is wrapped as `{"type": "function", "function": ...}`.
    Whether each function is well-formed is `validate.tool_problems`' job.

    >>> to_tools('[{"name": "now", "parameters": {"type": "object"}}]', file="f", line=1)
    ({'type': 'function', 'function': {'name': 'now', 'parameters': {'type': 'object'}}},)
    """
    if value is None or value == "":
        return ()
    tools = _json_text(value, file, line, field)
    if not isinstance(tools, list):
        raise DataError(f"expected a list of functions, got {_describe(tools)}", file=file, line=line, field=field)
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise DataError(f"expected an object describing a function, got {_describe(tool)}", file=file,
                            line=line, field=f"{field}[{i}]")
    return tuple(t if "function" in t or "type" in t else {"type": "function", "function": t} for t in tools)


def _arguments_text(arguments: Any) -> str:
    """Call arguments as JSON text: given text is kept as is (validation checks it), an object is serialized."""
    return arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)


def to_tool_call(value: Any, *, file: str, line: int, field: str, default_id: str) -> ToolCall:
    """One entry of an assistant turn's `tool_calls`: `{id, type: function, function: {name, arguments}}`;
    `arguments` may be JSON text or an object; a missing id becomes `default_id`.

    >>> to_tool_call({"id": "c1", "type": "function", "function": {"name": "now", "arguments": {}}},
    ...              file="f", line=1, field="messages[1].tool_calls[0]", default_id="call_1_0")
    ToolCall(id='c1', name='now', arguments='{}')
    """
    if not isinstance(value, dict):
        raise DataError(f"expected an object with id, type and function, got {_describe(value)}", file=file,
                        line=line, field=field)
    function = value.get("function")
    if not isinstance(function, dict):
        raise DataError("missing; expected an object with name and arguments" if function is None else
                        f"expected an object with name and arguments, got {_describe(function)}", file=file,
                        line=line, field=f"{field}.function")
    name = _string(function, "name", file, line, f"{field}.function.name")
    call_id = value.get("id")
    call_id = default_id if call_id is None or call_id == "" else _string(value, "id", file, line, f"{field}.id")
    return ToolCall(call_id, name, _arguments_text(function.get("arguments", {})))


def to_sharegpt_calls(value: Any, *, file: str, line: int, field: str, turn: int) -> tuple[ToolCall, ...]:
    """A sharegpt `function_call` turn's value: JSON text of `{"name", "arguments"}` or of a list of them (parallel
    calls); sharegpt has no call ids, so each gets `call_<turn>_<j>` (observations are linked to them in order).

    >>> to_sharegpt_calls('{"name": "now", "arguments": {"tz": "UTC"}}', file="f", line=1, field="c[1].value", turn=1)
    (ToolCall(id='call_1_0', name='now', arguments='{"tz": "UTC"}'),)
    """
    calls = _json_text(value, file, line, field)
    calls = calls if isinstance(calls, list) else [calls]
    found = []
    for j, call in enumerate(calls):
        where = field if len(calls) == 1 else f"{field}[{j}]"
        if not isinstance(call, dict):
            raise DataError(f"expected a call object with name and arguments, got {_describe(call)}", file=file,
                            line=line, field=where)
        name = _string(call, "name", file, line, f"{where}.name")
        found.append(ToolCall(f"call_{turn}_{j}", name, _arguments_text(call.get("arguments", {}))))
    return tuple(found)


def link_tool_results(messages: tuple[Message, ...]) -> tuple[Message, ...]:
    """Tool turns without a `tool_call_id` answer the calls before them in order (sharegpt's observations name no
    call); a turn that finds no call left unanswered keeps None, which validation reports.

    >>> m = link_tool_results((Message("assistant", "", (ToolCall("a", "f", "{}"),)), Message("tool", "1")))
    >>> m[1].tool_call_id
    'a'
    """
    waiting: list[str] = []
    linked = []
    for message in messages:
        waiting += [c.id for c in message.tool_calls]
        if message.role == "tool" and message.tool_call_id is None and waiting:
            message = replace(message, tool_call_id=waiting.pop(0))
        elif message.role == "tool" and message.tool_call_id in waiting:
            waiting.remove(message.tool_call_id)
        linked.append(message)
    return tuple(linked)


TurnConverter = Callable[..., Message]


def openai_turn(turn: dict, *, file: str, line: int, where: str, index: int) -> Message:
    """One OpenAI message: `{role, content}`, an assistant's `tool_calls` (content may then be null), a tool
    result's `tool_call_id`.

    >>> openai_turn({"role": "tool", "tool_call_id": "c1", "content": "21 C"}, file="f", line=1, where="m[2]",
    ...             index=2)
    Message(role='tool', content='21 C', tool_call_id='c1')
    """
    role = _string(turn, "role", file, line, f"{where}.role")
    if role not in ROLES:
        raise DataError(f"unknown role {role!r}; expected one of {', '.join(ROLES)}", file=file, line=line,
                        field=f"{where}.role")
    raw_calls = turn.get("tool_calls") if role == "assistant" else None
    if raw_calls is not None and not isinstance(raw_calls, list):
        raise DataError(f"expected a list of calls, got {_describe(raw_calls)}", file=file, line=line,
                        field=f"{where}.tool_calls")
    calls = tuple(to_tool_call(c, file=file, line=line, field=f"{where}.tool_calls[{j}]",
                               default_id=f"call_{index}_{j}") for j, c in enumerate(raw_calls or ()))
    content = "" if calls and turn.get("content") is None else _string(turn, "content", file, line,
                                                                        f"{where}.content")
    call_id = _optional_string(turn, "tool_call_id", file, line) if role == "tool" else None
    return Message(role, content, calls, call_id)


def sharegpt_turn(turn: dict, *, file: str, line: int, where: str, index: int) -> Message:
    """One sharegpt turn `{from, value}`: human/gpt/system text, a `function_call` (the value holds the call as
    JSON) or an `observation` (a tool's result).

    >>> sharegpt_turn({"from": "gpt", "value": "Yo"}, file="f", line=1, where="c[1]", index=1)
    Message(role='assistant', content='Yo')
    """
    source = _string(turn, "from", file, line, f"{where}.from")
    if source not in SHAREGPT_ROLES:
        raise DataError(f"unknown role {source!r}; expected one of {', '.join(SHAREGPT_ROLES)}", file=file,
                        line=line, field=f"{where}.from")
    if source == "function_call":
        if turn.get("value") is None:
            raise DataError("missing; expected the call as JSON", file=file, line=line, field=f"{where}.value")
        return Message("assistant", "", to_sharegpt_calls(turn["value"], file=file, line=line,
                                                          field=f"{where}.value", turn=index))
    return Message(SHAREGPT_ROLES[source], _string(turn, "value", file, line, f"{where}.value"))


def _conversation(row: dict, columns: Columns, *, shape: str, file: str, line: int, keys: str,
                  turn_message: TurnConverter) -> Record:
    key = columns.messages
    turns = row.get(key)
    if turns is None:
        raise DataError(f"missing; expected a list of {keys} turns", file=file, line=line, field=key)
    if not isinstance(turns, list):
        raise DataError(f"expected a list of {keys} turns, got {_describe(turns)}", file=file, line=line, field=key)
    messages = []
    for i, turn in enumerate(turns):
        where = f"{key}[{i}]"
        if not isinstance(turn, dict):
            raise DataError(f"expected an object with {keys.replace('/', ' and ')}, got {_describe(turn)}",
                            file=file, line=line, field=where)
        messages.append(turn_message(turn, file=file, line=line, where=where, index=i))
    system = _optional_string(row, columns.system, file, line)
    if system is not None and not (messages and messages[0].role == "system"):
        messages.insert(0, Message("system", system))
    tools = to_tools(row.get(columns.tools), file=file, line=line, field=columns.tools) if columns.tools else ()
    return Record(file, line, shape, messages=link_tool_results(tuple(messages)), tools=tools)


def to_messages(row: dict, columns: Columns, *, shape: str, file: str, line: int) -> Record:
    """OpenAI chat rows: `messages` of {role: system|user|assistant|tool, content: str}, with `tools`, an
    assistant's `tool_calls` and a tool result's `tool_call_id` as in OpenAI's fine-tuning format.

    >>> to_messages({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]},
    ...             DEFAULT_COLUMNS["messages"], shape="messages", file="f", line=1).messages
    (Message(role='user', content='Hi'), Message(role='assistant', content='Hello'))
    """
    return _conversation(row, columns, shape=shape, file=file, line=line, keys="role/content",
                         turn_message=openai_turn)


def to_sharegpt(row: dict, columns: Columns, *, shape: str, file: str, line: int) -> Record:
    """ShareGPT rows: `conversations` of {from: human|gpt|system|function_call|observation, value: str}, mapped to
    chat roles; `tools` (JSON text or a list) as LLaMA-Factory writes it.

    >>> to_sharegpt({"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Yo"}]},
    ...             DEFAULT_COLUMNS["sharegpt"], shape="sharegpt", file="f", line=1).messages
    (Message(role='user', content='Hi'), Message(role='assistant', content='Yo'))
    """
    return _conversation(row, columns, shape=shape, file=file, line=line, keys="from/value",
                         turn_message=sharegpt_turn)


def to_text(row: dict, columns: Columns, *, shape: str, file: str, line: int) -> Record:
    """Plain text rows, trained on every token.

    >>> to_text({"text": "Once upon a time"}, DEFAULT_COLUMNS["text"], shape="text", file="f", line=1).text
    'Once upon a time'
    """
    return Record(file, line, shape, text=_string(row, columns.text, file, line))


Converter = Callable[..., Record]

CONVERTERS: dict[str, Converter] = {
    "alpaca": to_pair,
    "qa": to_pair,
    "prompt_completion": to_pair,
    "input_output": to_pair,
    "messages": to_messages,
    "sharegpt": to_sharegpt,
    "text": to_text,
}
"""Shape name → converter `(row, columns, *, shape, file, line) -> Record`; dict order breaks detection ties."""


def convert(row: Any, shape: str, columns: Columns, file: str, line: int) -> Record:
    """One raw row as a Record of `shape`.

    Raises:
        DataError: naming file, line and field of the row's first structural problem.
    """
    if not isinstance(row, dict):
        raise DataError(f"expected an object with named fields, got {_describe(row)}", file=file, line=line)
    return CONVERTERS[check_shape_name(shape)](row, columns, shape=shape, file=file, line=line)


def fits(row: dict, shape: str, columns: Columns) -> bool:
    """Whether a row has the parts a shape requires (types are checked later, by conversion).

    >>> fits({"instruction": "a", "output": "b"}, "alpaca", DEFAULT_COLUMNS["alpaca"])
    True
    """
    kind = _kind(columns)
    if kind == "chat":
        turns = row.get(columns.messages)
        if not isinstance(turns, list):
            return False
        first = next((t for t in turns if isinstance(t, dict)), None)
        return first is None or ("from" if shape == "sharegpt" else "role") in first
    if kind == "text":
        return row.get(columns.text) is not None
    return row.get(columns.prompt) is not None and row.get(columns.response) is not None


def _natural_overlap(row: dict, shape: str) -> int:
    """How many of a shape's usual column names a row uses: breaks ties when explicit keys fit several shapes."""
    columns = DEFAULT_COLUMNS[shape]
    return sum(1 for key in (columns.prompt, columns.input, columns.response, columns.messages, columns.text)
               if key is not None and key in row)


def _keys_phrase(columns: Columns) -> str:
    if columns.messages:
        return f"a {columns.messages!r} list of turns"
    if columns.text:
        return f"a {columns.text!r} key"
    return f"{columns.prompt}/{columns.response} keys"


def detect_shape(rows: list[dict], data: DataConfig, file: str = "") -> tuple[str, str]:
    """The shape that fits the most rows (all of them are looked at), and a human reason.

    >>> detect_shape([{"instruction": "a", "input": "", "output": "b"}], DataConfig())
    ('alpaca', '1 of 1 records have instruction/output keys')

    Raises:
        DataError: no row fits any shape (the message lists the keys found), or the shape name is unknown.
    """
    if data.shape != "auto":
        return check_shape_name(data.shape), f"shape set explicitly (data.shape={data.shape})"
    if not rows:
        raise DataError("no records to read", file=file)
    fitting = Counter()
    natural = Counter()
    shape_columns = {shape: columns_for(shape, data) for shape in CONVERTERS}
    for row in rows:  # one pass over the rows: they may be streamed from a large file (data.sources)
        for shape, columns in shape_columns.items():
            if isinstance(row, dict) and fits(row, shape, columns):
                fitting[shape] += 1
                natural[shape] += _natural_overlap(row, shape)
    if not fitting:
        keys = Counter(k for row in rows if isinstance(row, dict) for k in row)
        found = ", ".join(f"{k!r} ({n})" for k, n in keys.most_common(12)) or "none"
        known = "; ".join(f"{s}: {_keys_phrase(c)}" for s, c in DEFAULT_COLUMNS.items())
        raise DataError(f"cannot detect the data shape: no record has the keys of a known shape ({known}). "
                        f"Keys found (records): {found}. Set data.shape and the column keys "
                        f"(--shape, --prompt-key, --response-key)", file=file)
    order = list(CONVERTERS)
    shape = max(fitting, key=lambda s: (fitting[s], natural[s], -order.index(s)))
    reason = f"{fitting[shape]} of {len(rows)} records have {_keys_phrase(columns_for(shape, data))}"
    if fitting[shape] < len(rows):
        reason += f"; the other {len(rows) - fitting[shape]} do not and are reported as problems"
    return shape, reason

