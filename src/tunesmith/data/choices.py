"""Multiple-choice records: a file of questions with choices and a right answer, read into `ChoiceItem`s.

Three shapes are read, so a benchmark works as downloaded:
- flat: `{"question", "choices": [...], "answer"}`, optionally with `"labels": [...]` naming the choices;
- Hugging Face ARC (`allenai/ai2_arc`): `{"question", "choices": {"text": [...], "label": [...]}, "answerKey"}`;
- ARC's original JSONL: `{"question": {"stem", "choices": [{"text", "label"}, ...]}, "answerKey"}`.

Only parsing lives here (no torch, no tokenizer); `tunesmith.evaluate.choices` scores the items.
"""

from __future__ import annotations

from dataclasses import dataclass

from tunesmith.data.load import read_rows
from tunesmith.errors import DataError


@dataclass(frozen=True)
class ChoiceItem:
    """One multiple-choice question: its choices' texts and the index of the right one."""

    question: str
    choices: tuple[str, ...]
    answer: int
    where: str = ""


def default_labels(count: int) -> list[str]:
    """A, B, C...: what `answer` letters mean when a record names no labels of its own.

    >>> default_labels(3)
    ['A', 'B', 'C']
    """
    return [chr(ord("A") + i) for i in range(count)]


def _choice_columns(choices, labels=None) -> tuple[list[str], list[str] | None] | None:
    """(texts, labels) from ["x", "y"], [{"text", "label"}, ...] or {"text": [...], "label": [...]}.

    `labels` is the record's own `labels` field, used with plain string choices. The labels come back as None
    when neither the choices nor the record name any (or not one per choice): then A, B, ... apply.
    """
    if isinstance(choices, dict) and isinstance(choices.get("text"), list):
        texts, labels = choices["text"], choices.get("label")
    elif isinstance(choices, list) and all(isinstance(c, dict) for c in choices):
        texts, labels = [c.get("text") for c in choices], [c.get("label") for c in choices]
    elif isinstance(choices, list):
        texts = choices
    else:
        return None
    if len(texts) < 2 or not all(isinstance(t, str) and t for t in texts):
        return None  # an empty choice has no length to normalize acc_norm by
    if not isinstance(labels, list) or len(labels) != len(texts) or any(label is None for label in labels):
        return list(texts), None
    return list(texts), [str(label) for label in labels]


def _answer_index(answer, texts: list[str], labels: list[str] | None) -> int | None:
    """0-based index of the right choice; None when `answer` names none.

    Labels the record names itself decide first, so with labels 1-4 (as some ARC questions have) the answer
    "3" or 3 is the third choice. Then an integer is a 0-based index, and a string is a default letter
    (A, B, ...) or the right choice's text.

    >>> _answer_index("3", ["w", "x", "y", "z"], ["1", "2", "3", "4"]), _answer_index(1, ["x", "y"], None)
    (2, 1)
    """
    if isinstance(answer, bool) or not isinstance(answer, (int, str)):
        return None
    key = str(answer).strip()
    if labels is not None and key in labels:
        return labels.index(key)
    if isinstance(answer, int):
        return answer if 0 <= answer < len(texts) else None
    for column in (labels or default_labels(len(texts)), texts):
        if key in column:
            return column.index(key)
    return None


def _answer_problem(answer, texts: list[str], labels: list[str] | None) -> str:
    """What a wrong `answer` could have been instead, labels first when the record names them."""
    label_text = f"a label ({', '.join(labels or default_labels(len(texts)))})"
    index_text = f"a choice index (0-{len(texts) - 1})"
    ways = [label_text, index_text] if labels is not None else [index_text, label_text]
    return f"{answer!r} is not {ways[0]}, {ways[1]} or one of the choices' texts"


def parse_choice_item(data: dict, file: str = "", line: int = 0) -> ChoiceItem:
    """A multiple-choice record, flat or in ARC's native shape, as a ChoiceItem.

    {"question": "2+2?", "choices": ["3", "4"], "answer": 1}                      -> ChoiceItem("2+2?", ("3", "4"), 1)
    {"question": "2+2?", "choices": ["3", "4"], "labels": ["1", "2"], "answer": "2"}   -> the same item
    {"question": {"stem": "2+2?", "choices": [{"text": "3", "label": "A"}, {"text": "4", "label": "B"}]},
     "answerKey": "B"}                                                            -> the same item
    `answer` may be one of the record's labels (its `labels` or the choices' own), a 0-based index, a letter
    (A, B, ... when the record names no labels) or a choice's text.

    Raises:
        DataError: naming the file, line and field that does not fit.
    """
    question, choices = data.get("question"), data.get("choices")
    if isinstance(question, dict):
        question, choices = question.get("stem"), question.get("choices")
    if not isinstance(question, str) or not question.strip():
        raise DataError("expected a non-empty question (or ARC's question.stem)", file=file, line=line,
                        field="question")
    columns = _choice_columns(choices, data.get("labels"))
    if columns is None:
        raise DataError("expected at least two non-empty choices: a list of strings or of {text, label}",
                        file=file, line=line, field="choices")
    texts, labels = columns
    plain = isinstance(choices, list) and all(isinstance(c, str) for c in choices)
    if plain and "labels" in data and labels is None:
        raise DataError(f"expected one label per choice ({len(texts)}), got {data['labels']!r}", file=file,
                        line=line, field="labels")
    key = "answer" if "answer" in data else "answerKey"
    answer = _answer_index(data.get(key), texts, labels)
    if answer is None:
        raise DataError(_answer_problem(data.get(key), texts, labels), file=file, line=line, field=key)
    return ChoiceItem(question, tuple(texts), answer, f"{file}:{line}")


def load_choice_items(path, limit: int | None = None) -> list[ChoiceItem]:
    """Every multiple-choice record of a file (JSONL, JSON, CSV...).

    Raises:
        DataError: listing every record that does not parse.
    """
    items, problems = [], []
    for row in read_rows(path):
        if row.problem is not None:
            problems.append(row.problem)
            continue
        try:
            items.append(parse_choice_item(row.data, row.file, row.line))
        except DataError as e:
            problems.extend(e.problems)
    if problems:
        raise DataError(problems)
    if not items:
        raise DataError(f"no multiple-choice records in {path}", file=str(path))
    return items[:limit] if limit else items
