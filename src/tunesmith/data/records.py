"""The canonical record every input shape is normalized into.

Everything downstream (templates, tokenization, split, stats) sees only `Record`, never a raw row, and every
record remembers where it came from so any later problem can name its file and line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Role = Literal["system", "user", "assistant"]
ROLES: tuple[str, ...] = ("system", "user", "assistant")


@dataclass(frozen=True)
class Message:
    role: str
    content: str


@dataclass(frozen=True)
class Record:
    """One training example, whatever shape it came in.

    Exactly one of three kinds:
    - pair: `prompt` (+ optional `input` context, `system`) and `response`;
    - chat: `messages`, a conversation whose assistant turns are trained on;
    - text: `text`, trained on every token.
    `file` and `line` (1-based; a CSV/Parquet row number counts data rows from 1) locate it in its source.
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
        return "\n".join(f"{m.role}: {m.content}" for m in record.messages[:-1])
    return "\n".join(p for p in (record.system or "", record.prompt, record.input) if p)


def record_to_dict(record: Record) -> dict:
    """A record as plain JSON-able data (messages as role/content dicts), for saving prepared splits."""
    data = {"file": record.file, "line": record.line, "shape": record.shape}
    if record.kind == "text":
        data["text"] = record.text
    elif record.kind == "chat":
        data["messages"] = [{"role": m.role, "content": m.content} for m in record.messages]
    else:
        data.update(prompt=record.prompt, input=record.input, response=record.response, system=record.system)
    return data


def record_from_dict(data: dict) -> Record:
    """Inverse of `record_to_dict`."""
    messages = tuple(Message(m["role"], m["content"]) for m in data.get("messages") or ())
    return Record(file=data["file"], line=data["line"], shape=data["shape"], prompt=data.get("prompt", ""),
                  input=data.get("input", ""), response=data.get("response", ""), system=data.get("system"),
                  messages=messages, text=data.get("text"))
