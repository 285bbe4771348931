"""From a user's file to validated canonical records: read, detect the shape, convert, check, report.

`load_records` is the one entry point the rest of tunesmith uses. Every problem names file, line, field
and what was expected. `data.on_error` decides what invalid records do: `auto` skips them when they are at most
1% of the file (dirt) and stops above that (a wrong key mapping, most likely), `fail` stops on any, `skip` drops
any number; skipped records come back with their raw rows so the caller can keep them (`rejected.jsonl`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from tunesmith.config import DataConfig
from tunesmith.data.load import read_rows
from tunesmith.data.records import Record
from tunesmith.data.shapes import DEFAULT_COLUMNS, Columns, columns_for, convert, detect_shape
from tunesmith.errors import DataError, DataProblem

AUTO_SKIP_PERCENT = 1
"""`on_error: auto` skips invalid records up to this share of the file (in percent) and stops above it."""

EXAMPLES_PER_KIND = 3
"""Invalid records shown for each kind of problem (all are counted)."""


@dataclass(frozen=True)
class Rejected:
    """One invalid record: its problem and the row as read (None when the row itself was unreadable)."""

    problem: DataProblem
    row: object = None

    def to_dict(self) -> dict:
        """The line `rejected.jsonl` keeps: where, why, and the raw record."""
        p = self.problem
        where = p.file if p.line is None else f"{p.file}:{p.line}"
        return {"where": where, "reason": f"{p.field}: {p.message}" if p.field else p.message, "record": self.row}


@dataclass
class LoadedData:
    """The valid records of one file, the shape they were read as and why, and what was skipped."""

    records: list[Record]
    shape: str
    reason: str
    skipped: list[DataProblem] = field(default_factory=list)
    file: str = ""
    rejected: list[Rejected] = field(default_factory=list)
    """The skipped records with their raw rows, in the order of `skipped`."""

    @property
    def total(self) -> int:
        """Records in the file, valid and invalid."""
        return len(self.records) + len(self.skipped)


@dataclass(frozen=True)
class ProblemGroup:
    """Invalid records with the same kind of problem: how many, and the first few."""

    kind: str
    count: int
    examples: list[str]
    """The first records: their location, plus the problem's own words where they differ from `kind`."""


def group_problems(problems: list[DataProblem], shown: int = EXAMPLES_PER_KIND) -> list[ProblemGroup]:
    """Problems grouped by kind (field and message, numbers aside), most frequent first; a kind is named by
    its first problem's words.

    >>> [(g.kind, g.count, g.examples) for g in group_problems([DataProblem("f", 1, "answer", "empty"),
    ...                                                         DataProblem("f", 9, "answer", "empty")])]
    [('answer: empty', 2, ['f:1', 'f:9'])]
    """
    groups: dict[str, list[tuple[str, str]]] = {}
    for p in problems:
        text = f"{p.field}: {p.message}" if p.field else p.message
        where = p.file if p.line is None else f"{p.file}:{p.line}"
        # messages[1] and messages[3], column 12 and column 80: the same kind of problem
        groups.setdefault(re.sub(r"\d+", "N", text), []).append((where, text))
    groups = dict(sorted(groups.items(), key=lambda item: -len(item[1])))
    return [ProblemGroup(found[0][1], len(found), [where if text == found[0][1] else f"{where}: {text}"
                                                   for where, text in found[:shown]])
            for found in groups.values()]


def is_small_share(invalid: int, total: int) -> bool:
    """True when `invalid` of `total` records is at most `AUTO_SKIP_PERCENT` (what `on_error: auto` skips).

    >>> is_small_share(1, 100), is_small_share(2, 199)
    (True, False)
    """
    return invalid * 100 <= AUTO_SKIP_PERCENT * total


def _share(invalid: int, total: int) -> str:
    return f"{invalid:,} of {total:,} records ({invalid / total:.1%})" if total else f"{invalid:,} records"


def on_error_outcome(on_error: str, invalid: int, total: int) -> str:
    """What training does with `invalid` of `total` records under `on_error`, and the way on ("" when none).

    >>> on_error_outcome("auto", 1, 1400)[:62]
    'training skips 1 of 1,400 records (0.1%): data.on_error: auto '
    """
    if not invalid:
        return ""
    share = _share(invalid, total)
    if on_error == "skip":
        return f"training skips {share} (data.on_error: skip) and keeps them in runs/<name>/rejected.jsonl"
    if on_error == "auto" and is_small_share(invalid, total):
        return (f"training skips {share}: data.on_error: auto (the default) skips up to {AUTO_SKIP_PERCENT}% and "
                f"keeps them in runs/<name>/rejected.jsonl; fix them, or accept them here with --on-error skip")
    if on_error == "auto":
        return (f"training stops: {share} is more than the {AUTO_SKIP_PERCENT}% data.on_error: auto skips, "
                f"which usually means a wrong key mapping (data.shape, data.prompt_key, data.response_key), "
                f"not dirt; fix the mapping, or skip them anyway with data.on_error: skip "
                f"(--set data.on_error=skip; --on-error skip for data inspect)")
    return (f"training stops on {share} (data.on_error: fail); to train on the valid ones set data.on_error: skip, "
            f"or auto to skip up to {AUTO_SKIP_PERCENT}% (--set data.on_error=skip; --on-error skip for data inspect)")


def check_record(record: Record, columns: Columns | None = None) -> list[DataProblem]:
    """Content problems of an already well-formed record: empty parts, conversations nobody answers.

    `columns` names the user's fields in messages (defaults: the shape's usual column names).

    >>> [str(p) for p in check_record(Record("f.jsonl", 3, "qa", prompt="Hi?", response=" "))]
    ['f.jsonl:3: answer: empty; expected the answer text']
    """
    columns = columns or DEFAULT_COLUMNS.get(record.shape) or Columns()

    def problem(field: str | None, message: str) -> list[DataProblem]:
        return [DataProblem(record.file, record.line, field, message)]

    if record.kind == "text":
        return problem(columns.text or "text", "empty; expected the text to train on") if not record.text.strip() \
            else []
    if record.kind == "pair":
        if not record.prompt.strip():
            return problem(columns.prompt or "prompt", "empty; expected the prompt text")
        if not record.response.strip():
            return problem(columns.response or "response", "empty; expected the answer text")
        return []
    key = columns.messages or "messages"
    roles = [m.role for m in record.messages]
    if "assistant" not in roles:
        return problem(key, "conversation has no assistant turn, so there is nothing to train on")
    if roles[-1] != "assistant":
        return problem(f"{key}[{len(roles) - 1}]", f"conversation ends with a {roles[-1]} turn; the last turn "
                                                   "must be the assistant's answer")
    if "user" not in roles:
        return problem(key, "conversation has no user turn")
    empty = next((i for i, m in enumerate(record.messages)
                  if m.role == "assistant" and not m.content.strip() and not m.tool_calls), None)
    if empty is not None:
        return problem(f"{key}[{empty}]", "empty assistant turn; expected the answer text")
    return tool_problems(record, columns)[:1]


def _function_problems(tool: object, field: str) -> list[tuple[str, str]]:
    """What is wrong with one entry of `tools` (OpenAI's `{"type": "function", "function": {name, description,
    parameters}}`), as (field, message) pairs."""
    if not isinstance(tool, dict):
        return [(field, "expected an object describing a function")]
    if tool.get("type", "function") != "function":
        return [(f"{field}.type", f"{tool.get('type')!r} is not supported; expected \"function\"")]
    function = tool.get("function")
    if not isinstance(function, dict):
        return [(f"{field}.function", "expected an object with name, description and parameters")]
    name = function.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.\-]{1,64}", name):
        return [(f"{field}.function.name", f"expected a function name (letters, digits, _ . -), got {name!r}")]
    if not isinstance(function.get("description", ""), str):
        return [(f"{field}.function.description", "expected a string")]
    parameters = function.get("parameters", {})
    if not isinstance(parameters, dict) or parameters.get("type", "object") != "object":
        return [(f"{field}.function.parameters", "expected a JSON schema object, e.g. "
                                                 "{\"type\": \"object\", \"properties\": {...}}")]
    return []


def _arguments_problem(arguments: str) -> str | None:
    """Why a call's arguments are unusable (they must be JSON text of an object), or None.

    >>> _arguments_problem('{"city": "Oslo"}'), _arguments_problem("city=Oslo")[:14]
    (None, 'not valid JSON')
    """
    try:
        value = json.loads(arguments)
    except json.JSONDecodeError as e:
        return f"not valid JSON: {e.msg} at character {e.pos + 1}"
    return None if isinstance(value, dict) else "expected a JSON object of named arguments"


def tool_problems(record: Record, columns: Columns | None = None) -> list[DataProblem]:
    """Problems of a conversation's tools and calls: each function well-formed, each call's arguments a JSON
    object naming an offered function, call ids unique, each tool result answering an earlier call.

    >>> from tunesmith.data.records import Message
    >>> [str(p) for p in tool_problems(Record("f", 2, "messages", messages=(Message("user", "Hi"),
    ...     Message("tool", "21 C", tool_call_id="c9"), Message("assistant", "Warm."))))]
    ["f:2: messages[1].tool_call_id: 'c9' answers no earlier call; give the id of the assistant's tool_calls entry"]
    """
    columns = columns or DEFAULT_COLUMNS.get(record.shape) or Columns()
    key, tools_key = columns.messages or "messages", columns.tools or "tools"
    sharegpt = record.shape == "sharegpt"
    found: list[tuple[str, str]] = []
    for i, tool in enumerate(record.tools):
        found += _function_problems(tool, f"{tools_key}[{i}]")
    offered = {t["function"]["name"] for t in record.tools if not _function_problems(t, "")}
    called: set[str] = set()
    for i, message in enumerate(record.messages):
        where = f"{key}[{i}]"
        for j, call in enumerate(message.tool_calls):
            at = f"{where}.value" if sharegpt else f"{where}.tool_calls[{j}]"
            problem = _arguments_problem(call.arguments)
            if problem:
                found.append((at if sharegpt else f"{at}.function.arguments", problem))
            if record.tools and call.name not in offered:
                found.append((at if sharegpt else f"{at}.function.name",
                              f"calls {call.name!r}, which is not among the record's tools "
                              f"({', '.join(sorted(offered)) or 'none valid'})"))
            if call.id in called:
                found.append((f"{at}.id", f"call id {call.id!r} is used twice; each call needs its own id"))
            called.add(call.id)
        if message.role != "tool":
            continue
        if sharegpt and message.tool_call_id is None:
            found.append((where, "observation answers no function_call before it"))
        elif message.tool_call_id is None:
            found.append((f"{where}.tool_call_id", "missing; a tool message names the call it answers "
                                                   "(the id of the assistant's tool_calls entry)"))
        elif message.tool_call_id not in called:
            found.append((f"{where}.tool_call_id", f"{message.tool_call_id!r} answers no earlier call; give the id "
                                                   f"of the assistant's tool_calls entry"))
    return [DataProblem(record.file, record.line, field, message) for field, message in found]


def to_records(rows: list, shape: str, columns: Columns, file: str,
               lines: list[int]) -> tuple[list[Record], list[Rejected]]:
    """Convert and check raw rows (with their line numbers); every failing row gives exactly one rejection."""
    records, rejected = [], []
    for row, line in zip(rows, lines):
        try:
            record = convert(row, shape, columns, file, line)
        except DataError as e:
            rejected.extend(Rejected(problem, row) for problem in e.problems[:1])
            continue
        found = check_record(record, columns)
        if found:
            rejected.append(Rejected(found[0], row))
        else:
            records.append(record)
    return records, rejected


def read_records(path: str | Path, data: DataConfig) -> LoadedData:
    """Every valid record of a data file and every invalid one, whatever `data.on_error` says (`data inspect`).

    Raises:
        DataError: the file is unreadable, its shape unknown, or no record in it is valid.
    """
    file = str(path)
    raw = read_rows(path, data.max_record_bytes)
    rejected = [Rejected(r.problem) for r in raw if r.problem is not None]
    good = [r for r in raw if r.problem is None]
    if not good:
        raise DataError([r.problem for r in rejected]
                        or [DataProblem(file, None, None, "no records to read (the file is empty)")])
    shape, reason = detect_shape([r.data for r in good], data, file=file)
    records, bad = to_records([r.data for r in good], shape, columns_for(shape, data), file, [r.line for r in good])
    rejected = sorted(rejected + bad, key=lambda r: r.problem.line or 0)
    problems = [r.problem for r in rejected]
    if not records:
        raise DataError(problems, hint=f"none of the {len(problems):,} records is valid: check data.shape and the "
                                       f"key settings (data.prompt_key, data.response_key, ...)")
    return LoadedData(records=records, shape=shape, reason=reason, skipped=problems, file=file, rejected=rejected)


def load_records(path: str | Path, data: DataConfig) -> LoadedData:
    """Read a data file into validated canonical records, invalid ones handled as `data.on_error` says.

    >>> # qa.jsonl: {"question": "2+2?", "answer": "4"}
    >>> # load_records("qa.jsonl", DataConfig()) -> LoadedData(records=[Record(..., prompt="2+2?", response="4")],
    >>> #     shape="qa", reason="1 of 1 records have question/answer keys", skipped=[])

    Raises:
        DataError: the file is unreadable or its shape unknown; no valid record is left; any invalid record with
            `on_error: fail`, more than 1% of them with `auto` (every problem listed, then the way on).
    """
    loaded = read_records(path, data)
    refuse_invalid(loaded.skipped, loaded.total, data.on_error)
    return loaded


def refuse_invalid(problems: list[DataProblem], total: int, on_error: str) -> None:
    """Stop when `data.on_error` does not let these invalid records of `total` be skipped.

    Raises:
        DataError: any invalid record with `on_error: fail`, more than 1% of them with `auto`.
    """
    invalid = len(problems)
    stops = on_error == "fail" or (on_error == "auto" and not is_small_share(invalid, total))
    if invalid and stops:
        raise DataError(problems, hint=on_error_outcome(on_error, invalid, total))
