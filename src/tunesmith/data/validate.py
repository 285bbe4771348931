"""From a user's file to validated canonical records: read, detect the shape, convert, check, report.

`load_records` is the one entry point the rest of tunesmith uses. Every problem names file, line, field
and what was expected; with `on_error: fail` all of them are raised together, with `skip` the bad records
are dropped and returned so the caller can say how many.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tunesmith.config import DataConfig
from tunesmith.data.load import read_rows
from tunesmith.data.records import Record
from tunesmith.data.shapes import DEFAULT_COLUMNS, Columns, columns_for, convert, detect_shape
from tunesmith.errors import DataError, DataProblem


@dataclass
class LoadedData:
    """The valid records of one file, the shape they were read as and why, and what was skipped."""

    records: list[Record]
    shape: str
    reason: str
    skipped: list[DataProblem] = field(default_factory=list)
    file: str = ""


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
    empty = next((i for i, m in enumerate(record.messages) if m.role == "assistant" and not m.content.strip()),
                 None)
    if empty is not None:
        return problem(f"{key}[{empty}]", "empty assistant turn; expected the answer text")
    return []


def to_records(rows: list, shape: str, columns: Columns, file: str,
               lines: list[int]) -> tuple[list[Record], list[DataProblem]]:
    """Convert and check raw rows (with their line numbers); every failing row gives exactly one problem."""
    records, problems = [], []
    for row, line in zip(rows, lines):
        try:
            record = convert(row, shape, columns, file, line)
        except DataError as e:
            problems.extend(e.problems)
            continue
        found = check_record(record, columns)
        if found:
            problems.append(found[0])
        else:
            records.append(record)
    return records, problems


def load_records(path: str | Path, data: DataConfig) -> LoadedData:
    """Read a data file into validated canonical records.

    >>> # qa.jsonl: {"question": "2+2?", "answer": "4"}
    >>> # load_records("qa.jsonl", DataConfig()) -> LoadedData(records=[Record(..., prompt="2+2?", response="4")],
    >>> #     shape="qa", reason="1 of 1 records have question/answer keys", skipped=[])

    Raises:
        DataError: the file is unreadable or its shape unknown; with `on_error: fail`, any invalid record
            (every problem listed); with `skip`, when no valid record is left.
    """
    file = str(path)
    raw = read_rows(path, data.max_record_bytes)
    problems = [r.problem for r in raw if r.problem is not None]
    good = [r for r in raw if r.problem is None]
    if not good:
        raise DataError(problems or [DataProblem(file, None, None, "no records to read (the file is empty)")])
    shape, reason = detect_shape([r.data for r in good], data, file=file)
    records, bad = to_records([r.data for r in good], shape, columns_for(shape, data), file, [r.line for r in good])
    problems = sorted(problems + bad, key=lambda p: p.line or 0)
    if problems and data.on_error == "fail":
        raise DataError(problems)
    if not records:
        raise DataError(problems)
    return LoadedData(records=records, shape=shape, reason=reason, skipped=problems, file=file)
