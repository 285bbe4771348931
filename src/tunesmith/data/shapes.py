"""Shapes: detect how a file's rows are laid out and turn each row into a canonical `Record`.

One small pure function per kind of shape, a column map per shape (which the explicit `*_key` options of
`DataConfig` override), and `CONVERTERS`, a plain dict from shape name to converter. A converter raises
`DataError` naming file, line and field for the first structural problem of a row (missing field, wrong
type, unknown role); content checks (empty answer, no assistant turn) live in `validate.py`.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any, Callable

from tunesmith.config import DataConfig
from tunesmith.data.records import ROLES, Message, Record
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


DEFAULT_COLUMNS: dict[str, Columns] = {
    "alpaca": Columns(prompt="instruction", input="input", response="output", system="system"),
    "qa": Columns(prompt="question", response="answer", system="system"),
    "prompt_completion": Columns(prompt="prompt", response="completion", system="system"),
    "input_output": Columns(prompt="input", response="output", system="system"),
    "messages": Columns(messages="messages", system="system"),
    "sharegpt": Columns(messages="conversations", system="system"),
    "text": Columns(text="text"),
}
"""Each shape's usual column names; `input` and `system` are optional, the others required."""

SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system"}
"""ShareGPT `from` values and the chat role each becomes."""


def columns_for(shape: str, data: DataConfig) -> Columns:
    """The shape's default columns with the explicit keys of `data` put in their place.

    >>> columns_for("qa", DataConfig(prompt_key="q"))
    Columns(prompt='q', input=None, response='answer', system='system', messages=None, text=None)
    """
    columns = DEFAULT_COLUMNS[check_shape_name(shape)]
    explicit = {"prompt": data.prompt_key, "input": data.input_key, "response": data.response_key,
                "system": data.system_key, "messages": data.messages_key, "text": data.text_key}
    # A key only applies to shapes that have that part: text_key means nothing to an alpaca file.
    parts = _PARTS[_kind(columns)]
    return replace(columns, **{part: key for part, key in explicit.items() if key and part in parts})


_PARTS = {"pair": ("prompt", "input", "response", "system"), "chat": ("messages", "system"), "text": ("text",)}


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


def _conversation(row: dict, columns: Columns, *, shape: str, file: str, line: int, role_key: str,
                  content_key: str, role_map: dict[str, str]) -> Record:
    key = columns.messages
    turns = row.get(key)
    if turns is None:
        raise DataError(f"missing; expected a list of {role_key}/{content_key} turns", file=file, line=line,
                        field=key)
    if not isinstance(turns, list):
        raise DataError(f"expected a list of {role_key}/{content_key} turns, got {_describe(turns)}",
                        file=file, line=line, field=key)
    messages = []
    for i, turn in enumerate(turns):
        where = f"{key}[{i}]"
        if not isinstance(turn, dict):
            raise DataError(f"expected an object with {role_key} and {content_key}, got {_describe(turn)}",
                            file=file, line=line, field=where)
        role = _string(turn, role_key, file, line, f"{where}.{role_key}")
        if role not in role_map:
            raise DataError(f"unknown role {role!r}; expected one of {', '.join(role_map)}", file=file, line=line,
                            field=f"{where}.{role_key}")
        messages.append(Message(role_map[role], _string(turn, content_key, file, line, f"{where}.{content_key}")))
    system = _optional_string(row, columns.system, file, line)
    if system is not None and not (messages and messages[0].role == "system"):
        messages.insert(0, Message("system", system))
    return Record(file, line, shape, messages=tuple(messages))


def to_messages(row: dict, columns: Columns, *, shape: str, file: str, line: int) -> Record:
    """OpenAI chat rows: `messages` of {role: system|user|assistant, content: str}.

    >>> to_messages({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]},
    ...             DEFAULT_COLUMNS["messages"], shape="messages", file="f", line=1).messages
    (Message(role='user', content='Hi'), Message(role='assistant', content='Hello'))
    """
    return _conversation(row, columns, shape=shape, file=file, line=line, role_key="role", content_key="content",
                         role_map={r: r for r in ROLES})


def to_sharegpt(row: dict, columns: Columns, *, shape: str, file: str, line: int) -> Record:
    """ShareGPT rows: `conversations` of {from: human|gpt|system, value: str}, mapped to chat roles.

    >>> to_sharegpt({"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Yo"}]},
    ...             DEFAULT_COLUMNS["sharegpt"], shape="sharegpt", file="f", line=1).messages
    (Message(role='user', content='Hi'), Message(role='assistant', content='Yo'))
    """
    return _conversation(row, columns, shape=shape, file=file, line=line, role_key="from", content_key="value",
                         role_map=SHAREGPT_ROLES)


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
    for shape in CONVERTERS:
        columns = columns_for(shape, data)
        for row in rows:
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

