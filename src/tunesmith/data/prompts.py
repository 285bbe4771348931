"""Prompts: text, conversations and JSONL prompt files, each read into a record whose answer is still empty.

A line holds `prompt` (or `instruction`/`question`, with optional `input` and `system`) or a `messages`
conversation ending with a user turn. Every bad line is reported at once, with its file, line and field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from tunesmith.data.records import Message, Record
from tunesmith.errors import DataError, DataProblem

PROMPT_KEYS = ("prompt", "instruction", "question")
"""Keys a prompts file may use for the question; `input` and `system` are read alongside, or `messages`."""


def as_prompt_record(item: Record | Sequence[Message | dict] | str) -> Record:
    """Whatever the caller holds (a record, a conversation ending with a user turn, a bare user message), as a
    record whose answer is still to be written.

    >>> as_prompt_record("Hi").messages
    (Message(role='user', content='Hi'), Message(role='assistant', content=''))

    Raises:
        ValueError: the conversation already ends with an answer.
    """
    if isinstance(item, Record):
        return item
    if isinstance(item, str):
        item = [Message("user", item)]
    messages = tuple(m if isinstance(m, Message) else Message(m["role"], m["content"]) for m in item)
    if messages and messages[-1].role == "assistant":
        raise ValueError("the conversation already ends with an answer; the last message must be the user's")
    return Record("<prompt>", 1, "messages", messages=messages + (Message("assistant", ""),))


def _messages_record(messages: object, file: str, line: int) -> Record:
    """A `messages` conversation ending with a user turn, with the empty answer appended.

    Raises:
        DataError: not a list of {role, content} messages ending with a user message.
    """
    ok = isinstance(messages, list) and messages and all(
        isinstance(m, dict) and m.get("role") in ("system", "user", "assistant")
        and isinstance(m.get("content"), str) for m in messages)
    if not ok or messages[-1]["role"] != "user":
        raise DataError("expected a list of {role, content} messages ending with a user message",
                        file=file, line=line, field="messages")
    return Record(file, line, "messages",
                  messages=tuple(Message(m["role"], m["content"]) for m in messages) + (Message("assistant", ""),))


def prompt_record(row: object, file: str, line: int) -> Record:
    """One line of a prompts file as a record still to be answered.

    >>> prompt_record({"instruction": "Add", "input": "2+2"}, "p.jsonl", 1).input
    '2+2'

    Raises:
        DataError: the line is not an object with a prompt or a conversation ending with a user message.
    """
    if not isinstance(row, dict):
        raise DataError("expected a JSON object", file=file, line=line)
    if "messages" in row:
        return _messages_record(row["messages"], file, line)
    key = next((k for k in PROMPT_KEYS if k in row), None)
    if key is None or not isinstance(row[key], str):
        raise DataError(f"expected a text field {' or '.join(PROMPT_KEYS)} (or messages)", file=file, line=line,
                        field=key)
    for extra in ("input", "system"):
        if row.get(extra) is not None and not isinstance(row[extra], str):
            raise DataError("expected text", file=file, line=line, field=extra)
    return Record(file, line, key, prompt=row[key], input=row.get("input") or "", system=row.get("system"))


def _read_lines(path: Path) -> list[str]:
    """The file's lines (a UTF-8 BOM is dropped).

    Raises:
        DataError: the file is missing or not UTF-8.
    """
    if not path.is_file():
        raise DataError("file not found", file=str(path))
    with open(path, encoding="utf-8-sig", errors="strict") as f:
        try:
            return f.read().splitlines()
        except UnicodeDecodeError as e:
            raise DataError(f"not UTF-8 text ({e})", file=str(path)) from None


def read_prompts(path: str | Path) -> list[tuple[dict, Record]]:
    """Every line of a JSONL prompts file: the row as written and the record to answer (blank lines skipped).

    Raises:
        DataError: listing every bad line (file, line, field).
    """
    path = Path(path)
    rows, problems = [], []
    for number, text in enumerate(_read_lines(path), 1):
        if not text.strip():
            continue
        try:
            row = json.loads(text)
            rows.append((row, prompt_record(row, str(path), number)))
        except json.JSONDecodeError as e:
            problems.append(DataProblem(str(path), number, None, f"not valid JSON: {e.msg}"))
        except DataError as e:
            problems.extend(e.problems)
    if problems:
        raise DataError(problems)
    if not rows:
        raise DataError("no prompts in the file", file=str(path))
    return rows
