"""The canonical record every input shape is normalized into.

Everything downstream (templates, tokenization, split, stats) sees only `Record`, never a raw row, and every
record remembers where it came from so any later problem can name its file and line.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Literal

Role = Literal["system", "user", "assistant", "tool"]
ROLES: tuple[str, ...] = ("system", "user", "assistant", "tool")


@dataclass(frozen=True)
class ToolCall:
    """One function call an assistant turn makes (OpenAI's `tool_calls[i]`); `arguments` is the JSON text as
    given (validation checks it parses to an object), so a record saves and reloads byte for byte."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class Message:
    """One turn. An assistant turn may carry `tool_calls` (its content may then be empty); a `tool` turn is a
    call's result and names the call it answers in `tool_call_id`."""

    role: str
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None

    def __repr__(self) -> str:  # the plain turns of most data read as before: role and content only
        extra = "".join(f", {k}={getattr(self, k)!r}" for k in ("tool_calls", "tool_call_id") if getattr(self, k))
        return f"Message(role={self.role!r}, content={self.content!r}{extra})"


@dataclass(frozen=True)
class Record:
    """One training example, whatever shape it came in.

    Exactly one of three kinds:
    - pair: `prompt` (+ optional `input` context, `system`) and `response`;
    - chat: `messages`, a conversation whose assistant turns are trained on;
    - text: `text`, trained on every token.
    `file` and `line` (1-based; a CSV/Parquet row number counts data rows from 1) locate it in its source.
    A chat record may also offer `tools` and hold tool calls and their results (`has_tool_calls`).
    """

    file: str
    line: int
    shape: str
    prompt: str = ""
    input: str = ""
    response: str = ""
    system: str | None = None
    messages: tuple[Message, ...] = field(default=())
    text: str | None = None
    tools: tuple[dict, ...] = field(default=(), hash=False)
    """The functions a chat record's assistant may call: OpenAI's `tools` list of JSON-schema functions."""

    @property
    def kind(self) -> Literal["pair", "chat", "text"]:
        if self.text is not None:
            return "text"
        if self.messages:
            return "chat"
        return "pair"

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"

    def __repr__(self) -> str:  # `tools` only when there are some, so plain records read as before
        names = [f.name for f in fields(self) if f.name != "tools"]
        tools = f", tools={self.tools!r}" if self.tools else ""
        return f"Record({', '.join(f'{n}={getattr(self, n)!r}' for n in names)}{tools})"


def has_tool_calls(record: Record) -> bool:
    """True when a record offers tools, calls one or holds a tool's result: it needs a template that renders them.

    >>> has_tool_calls(Record("f", 1, "messages", messages=(Message("tool", "21 C", tool_call_id="c1"),)))
    True
    """
    return bool(record.tools) or any(m.tool_calls or m.role == "tool" for m in record.messages)


def message_to_dict(message: Message) -> dict:
    """A turn as OpenAI's message dict: role and content, plus `tool_calls` / `tool_call_id` when it has them.

    >>> message_to_dict(Message("assistant", "", (ToolCall("c1", "f", '{"x": 1}'),)))
    {'role': 'assistant', 'content': '', 'tool_calls': [{'id': 'c1', 'type': 'function', \
'function': {'name': 'f', 'arguments': '{"x": 1}'}}]}
    """
    data = {"role": message.role, "content": message.content}
    if message.tool_calls:
        data["tool_calls"] = [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                              for c in message.tool_calls]
    if message.tool_call_id is not None:
        data["tool_call_id"] = message.tool_call_id
    return data


def message_from_dict(data: dict) -> Message:
    """Inverse of `message_to_dict` (for saved, already valid records)."""
    calls = tuple(ToolCall(c["id"], c["function"]["name"], c["function"]["arguments"])
                  for c in data.get("tool_calls") or ())
    return Message(data["role"], data["content"], calls, data.get("tool_call_id"))


def as_messages(record: Record) -> tuple[Message, ...]:
    """A pair record as a conversation; a chat record as is.

    >>> as_messages(Record("f", 1, "qa", prompt="Hi?", response="Hello."))
    (Message(role='user', content='Hi?'), Message(role='assistant', content='Hello.'))
    """
    if record.kind == "chat":
        return record.messages
    if record.kind == "text":
        raise ValueError("a text record has no conversation")
    user = record.prompt if not record.input else f"{record.prompt}\n\n{record.input}"
    head = (Message("system", record.system),) if record.system else ()
    return head + (Message("user", user), Message("assistant", record.response))


def is_single_turn(record: Record) -> bool:
    """True when a chat record is one user turn and one assistant answer (optionally after a system message)."""
    roles = [m.role for m in record.messages if m.role != "system"]
    return roles == ["user", "assistant"]


def as_pair(record: Record) -> Record:
    """A single-turn chat record as a pair record (so prompt templates like alpaca can render it).

    Raises:
        ValueError: the record is a multi-turn conversation or plain text.
    """
    if record.kind == "pair":
        return record
    if record.kind != "chat" or not is_single_turn(record):
        raise ValueError(f"{record.where}: only single-turn conversations can use a prompt/response template")
    system = next((m.content for m in record.messages if m.role == "system"), None)
    user, assistant = [m.content for m in record.messages if m.role != "system"]
    return Record(record.file, record.line, record.shape, prompt=user, response=assistant, system=system)


def prompt_key(record: Record) -> str:
    """What identifies a record's question for duplicate checks and the split: everything before the answer."""
    if record.kind == "text":
        return record.text or ""
    if record.kind == "chat":
        return "\n".join(f"{m.role}: {m.content}" + "".join(f" {c.name}({c.arguments})" for c in m.tool_calls)
                         for m in record.messages[:-1])
    return "\n".join(p for p in (record.system or "", record.prompt, record.input) if p)


def record_to_dict(record: Record) -> dict:
    """A record as plain JSON-able data (messages as role/content dicts), for saving prepared splits."""
    data = {"file": record.file, "line": record.line, "shape": record.shape}
    if record.kind == "text":
        data["text"] = record.text
    elif record.kind == "chat":
        data["messages"] = [message_to_dict(m) for m in record.messages]
        if record.tools:
            data["tools"] = list(record.tools)
    else:
        data.update(prompt=record.prompt, input=record.input, response=record.response, system=record.system)
    return data


def record_from_dict(data: dict) -> Record:
    """Inverse of `record_to_dict`."""
    messages = tuple(message_from_dict(m) for m in data.get("messages") or ())
    return Record(file=data["file"], line=data["line"], shape=data["shape"], prompt=data.get("prompt", ""),
                  input=data.get("input", ""), response=data.get("response", ""), system=data.get("system"),
                  messages=messages, text=data.get("text"), tools=tuple(data.get("tools") or ()))
