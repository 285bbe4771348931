"""Parsing what a teacher wrote: numbered self-instruct tasks, question/answer JSON, grading verdicts.

Teachers wrap answers in prose, markdown and code fences, and sometimes drop a field. The parsers accept
that mess, keep only items that are whole, and count the rest as malformed so the summary can say so.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Task:
    """One instruction/input/output triple; `id` names a seed task in provenance."""

    instruction: str
    input: str
    output: str
    id: str = ""


_LABEL = re.compile(
    r"^[ \t>#*_-]*(?:(\d+)\s*[.):]\s*)?[*_]*(instruction|input|output)[*_]*\s*[:：][*_]*[ \t]*",
    re.IGNORECASE | re.MULTILINE)
_NO_INPUT = {"", "<noinput>", "<no input>", "noinput", "no input", "none", "n/a", "-", "<none>", "(none)"}


_SEPARATOR = re.compile(r"^\s*#{3,}\s*$", re.MULTILINE)


def _clean_field(text: str) -> str:
    # A field ends at a separator line (what follows is the next task or the teacher's chatter); markdown
    # emphasis left around it is format, not content.
    text = _SEPARATOR.split(text, 1)[0]
    return re.sub(r"^\*\*\s*|\s*\*\*$", "", text.strip())


def parse_numbered_tasks(text: str) -> tuple[list[Task], int]:
    """Tasks in the numbered format the self-instruct prompt asks for, and how many items were malformed.

    Labels may carry numbers, markdown bold or quote marks; `<noinput>` means no input. An item without an
    instruction or an output is malformed; a reply with no labels at all counts as one malformed item.

    >>> parse_numbered_tasks("1. Instruction: Add 2 and 3.\\n1. Input: <noinput>\\n1. Output: 5\\n###\\n"
    ...                      "2. **Instruction:** Name a colour.\\n2. Output:")
    ([Task(instruction='Add 2 and 3.', input='', output='5', id='')], 1)
    """
    labels = list(_LABEL.finditer(text))
    if not labels:
        return [], 1
    items: list[dict] = []
    malformed = 0
    new_item = True  # a separator line (###) since the last label means the next fields start a new task
    for label, following in zip(labels, labels[1:] + [None]):
        number, kind = label.group(1), label.group(2).lower()
        raw = text[label.end(): following.start() if following else len(text)]
        value = _clean_field(raw)
        if kind == "instruction":
            items.append({"instruction": value, "number": number})
        elif new_item or kind in items[-1] or (number and items[-1]["number"] and number != items[-1]["number"]):
            malformed += 1  # an input/output with no instruction of its own, or given twice
        else:
            items[-1][kind] = value
        new_item = bool(_SEPARATOR.search(raw))
    tasks = []
    for item in items:
        if not item.get("instruction") or not item.get("output"):
            malformed += 1
            continue
        value = item.get("input", "")
        tasks.append(Task(" ".join(item["instruction"].split()), "" if value.lower() in _NO_INPUT else value,
                          item["output"]))
    return tasks, malformed


_FENCE = re.compile(r"```[a-zA-Z]*\s*\n(.*?)```", re.DOTALL)


def extract_json(text: str):
    """The first JSON array or object in a reply, tolerating code fences and prose around it; None if none.

    >>> extract_json('Sure! ```json\\n[{"question": "Q?", "answer": "A."}]\\n``` Hope it helps.')
    [{'question': 'Q?', 'answer': 'A.'}]
    """
    decoder = json.JSONDecoder()
    candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    for candidate in candidates:
        starts = [i for i, c in enumerate(candidate) if c in "[{"][:200]
        for start in starts:
            try:
                value, _ = decoder.raw_decode(candidate, start)
            except (json.JSONDecodeError, RecursionError):
                continue
            if isinstance(value, (list, dict)):
                return value
    return None


def _field(item: dict, *names: str):
    """The value under the first of `names` present in `item`, keys compared case-insensitively (teachers vary)."""
    lowered = {str(k).lower(): v for k, v in item.items()}
    return next((lowered[n] for n in names if n in lowered), None)


def parse_qa_pairs(text: str) -> tuple[list[tuple[str, str]], int]:
    """(question, answer) pairs from a JSON reply, and how many items were malformed.

    Accepts a list of {question, answer} objects, or an object holding such a list; items that are not
    objects with two non-empty strings are malformed. A reply with no JSON counts as one malformed item.

    >>> parse_qa_pairs('```json\\n[{"question": "Who?", "answer": "Ada."}, {"question": 3}]\\n```')
    ([('Who?', 'Ada.')], 1)
    """
    value = extract_json(text)
    if isinstance(value, dict):
        if _field(value, "question") is not None:
            value = [value]
        else:
            value = next((v for v in value.values() if isinstance(v, list)), None)
    if not isinstance(value, list):
        return [], 1
    pairs, malformed = [], 0
    for item in value:
        question = _field(item, "question", "q") if isinstance(item, dict) else None
        answer = _field(item, "answer", "a") if isinstance(item, dict) else None
        if isinstance(question, str) and isinstance(answer, str) and question.strip() and answer.strip():
            pairs.append((" ".join(question.split()), answer.strip()))
        else:
            malformed += 1
    return pairs, malformed


_YES = {"yes", "true", "grounded", "supported", "y"}
_NO = {"no", "false", "not grounded", "unsupported", "n"}


def _verdict(value) -> bool | None:
    """A yes/no the teacher wrote as a boolean or one of the words it tends to use; None for anything else."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _YES | _NO:
        return value.strip().lower() in _YES
    return None


def parse_grades(text: str, count: int) -> list[bool | None]:
    """The teacher's grounded/not verdict for each of `count` pairs; None where it gave none.

    >>> parse_grades('[{"pair": 2, "grounded": false}, {"pair": 1, "grounded": true}]', 3)
    [True, False, None]
    """
    value = extract_json(text)
    if isinstance(value, dict):
        value = next((v for v in value.values() if isinstance(v, list)), None)
    verdicts: list[bool | None] = [None] * count
    if not isinstance(value, list):
        return verdicts
    for position, item in enumerate(value):
        index, verdict = position, _verdict(item)
        if isinstance(item, dict):
            verdict = _verdict(_field(item, "grounded", "verdict", "answer"))
            number = _field(item, "pair", "id", "index", "number")
            if isinstance(number, int) and not isinstance(number, bool):
                index = number - 1
        if 0 <= index < count and verdict is not None:
            verdicts[index] = verdict
    return verdicts
