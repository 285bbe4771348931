"""Baked-in templates out of the prompts: `### Question:` headers, alpaca sections, ChatML turns, `[INST]` tags.

A file whose prompts were already formatted with some template would be templated twice: the model would learn
the old markers inside its own template, and expect them from every user. Each known form has one small pure
function from a prompt's text to what it held (`Unbaked`), or None when the text is not in that form;
`strip_record` applies a form to one record, `strip_templates` decides for a whole file (`data.strip_template`).

The marker atoms live here once; `tunesmith.data.stats.TEMPLATE_MARKERS` builds its detectors from them.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from dataclasses import dataclass
from typing import Callable

from tunesmith.data.records import Message, Record

__all__ = ["FORM_LABELS", "STRIPPERS", "Stripped", "Unbaked", "baked_form", "strip_alpaca", "strip_chatml",
           "strip_inst", "strip_prompt", "strip_qa", "strip_record", "strip_response", "strip_templates"]

SECTION_NAMES = ("Instruction", "Input", "Response", "Question", "Answer", "Human", "Assistant", "System")
"""The markdown headers (`### Name:`) that prompt templates such as alpaca and qa use."""


def section(*names: str) -> str:
    """Regex of a `### Name:` header for any of `names` (match it case-insensitively).

    >>> bool(re.fullmatch(section("Question"), "### Question:"))
    True
    """
    return rf"###[ \t]*(?:{'|'.join(names)})[ \t]*:"


IM_START, IM_END = re.escape("<|im_start|>"), re.escape("<|im_end|>")
INST_OPEN, INST_CLOSE = re.escape("[INST]"), re.escape("[/INST]")
SYS_OPEN, SYS_CLOSE = re.escape("<<SYS>>"), re.escape("<</SYS>>")
BOS, EOS = re.escape("<s>"), re.escape("</s>")
ALPACA_PREAMBLE = (r"Below is an instruction that describes a task(?:, paired with an input that provides further "
                   r"context)?\.\s*Write a response that appropriately completes the request\.")
"""Stanford Alpaca's opening sentence, with and without input."""

_LEFTOVER = re.compile("|".join([section(*SECTION_NAMES), IM_START, IM_END, INST_OPEN, INST_CLOSE, SYS_OPEN,
                                 SYS_CLOSE, BOS, EOS]), re.IGNORECASE)
_FLAGS = re.IGNORECASE | re.DOTALL
_QA = re.compile(rf"\s*{section('Question')}\s*(?P<prompt>.*?)(?:\s*{section('Answer')})?\s*", _FLAGS)
_ALPACA = re.compile(rf"\s*(?:{ALPACA_PREAMBLE}\s*)?{section('Instruction')}\s*(?P<prompt>.*?)"
                     rf"(?:\s*{section('Input')}\s*(?P<input>.*?))?(?:\s*{section('Response')})?\s*", _FLAGS)
_CHATML_TURN = re.compile(rf"{IM_START}(?P<role>\w+)[ \t]*\n?(?P<content>.*?)(?:{IM_END}\s*|(?={IM_START})|\Z)",
                          re.DOTALL)
_INST = re.compile(rf"\s*(?:{BOS})?\s*{INST_OPEN}\s*(?:{SYS_OPEN}\s*(?P<system>.*?)\s*{SYS_CLOSE}\s*)?"
                   rf"(?P<prompt>.*?)\s*{INST_CLOSE}\s*", re.DOTALL)


@dataclass(frozen=True)
class Unbaked:
    """What a templated prompt held once its markers are gone: the prompt, and input or system text if any."""

    prompt: str
    input: str = ""
    system: str | None = None


def _unbaked(prompt: str | None, input: str | None = None, system: str | None = None) -> Unbaked | None:
    """None when nothing would be left, or when markers remain (the text is in some other form)."""
    if prompt is None:
        return None
    prompt, input, system = prompt.strip(), (input or "").strip(), (system or "").strip()
    if not prompt or any(_LEFTOVER.search(part) for part in (prompt, input, system)):
        return None
    return Unbaked(prompt, input, system or None)


def strip_qa(text: str) -> Unbaked | None:
    """The question inside the qa form: `### Question:` then the text, optionally `### Answer:` at the end.

    >>> strip_qa("### Question:\\nWhat is 2+2?\\n\\n### Answer:")
    Unbaked(prompt='What is 2+2?', input='', system=None)
    >>> strip_qa("What is 2+2?") is None
    True
    """
    match = _QA.fullmatch(text)
    return _unbaked(match["prompt"]) if match else None


def strip_alpaca(text: str) -> Unbaked | None:
    """Instruction and input of an alpaca prompt: the preamble, `### Instruction:`, `### Input:`, `### Response:`.

    >>> strip_alpaca("### Instruction:\\nAdd.\\n\\n### Input:\\n2, 2\\n\\n### Response:")
    Unbaked(prompt='Add.', input='2, 2', system=None)
    """
    match = _ALPACA.fullmatch(text)
    return _unbaked(match["prompt"], match["input"]) if match else None


def strip_chatml(text: str) -> Unbaked | None:
    """The user turn of a ChatML prompt (`<|im_start|>user ... <|im_end|>`) and its system turn, if any.

    An empty assistant turn at the end (the generation prompt) goes too; a whole conversation is left alone.

    >>> strip_chatml("<|im_start|>user\\nHi?<|im_end|>\\n<|im_start|>assistant\\n")
    Unbaked(prompt='Hi?', input='', system=None)
    """
    text, turns, end = text.strip(), [], 0
    for match in _CHATML_TURN.finditer(text):
        if match.start() != end:
            return None  # text outside the turns
        turns.append((match["role"], match["content"].strip()))
        end = match.end()
    if not turns or end != len(text):
        return None
    if turns[-1] == ("assistant", ""):
        turns.pop()
    roles = [role for role, _ in turns]
    if roles not in (["user"], ["system", "user"]):
        return None
    return _unbaked(turns[-1][1], system=turns[0][1] if roles[0] == "system" else None)


def strip_inst(text: str) -> Unbaked | None:
    """The prompt of a Llama-2 style `[INST] ... [/INST]` turn, with its `<<SYS>>` block as the system text.

    >>> strip_inst("<s>[INST] <<SYS>>\\nBe brief.\\n<</SYS>>\\n\\nHi? [/INST]")
    Unbaked(prompt='Hi?', input='', system='Be brief.')
    """
    match = _INST.fullmatch(text)
    return _unbaked(match["prompt"], system=match["system"]) if match else None


STRIPPERS: dict[str, Callable[[str], Unbaked | None]] = {
    "qa": strip_qa, "alpaca": strip_alpaca, "chatml": strip_chatml, "inst": strip_inst}
"""Known baked-in forms, name -> prompt text to what it held (None when not in that form)."""

FORM_LABELS = {"qa": "### Question: / ### Answer:", "alpaca": "alpaca ### Instruction: / ### Response:",
               "chatml": "<|im_start|>user ... <|im_end|>", "inst": "[INST] ... [/INST]"}
"""How each form looks, for messages."""

_RESPONSE_HEAD = {"qa": section("Answer"), "alpaca": section("Response")}
_RESPONSE_TAIL = {"chatml": IM_END, "inst": EOS}


def strip_response(text: str, form: str) -> str:
    """An answer without the markers its form puts around it: a leading `### Answer:`, a trailing `<|im_end|>`.

    The text stays as it is when nothing would be left of it.

    >>> strip_response("### Answer: 4", "qa"), strip_response("4<|im_end|>", "chatml"), strip_response(" 4", "qa")
    ('4', '4', ' 4')
    """
    stripped = text
    if form in _RESPONSE_HEAD:
        stripped = re.sub(rf"\A\s*{_RESPONSE_HEAD[form]}", "", stripped, flags=re.IGNORECASE)
    if form in _RESPONSE_TAIL:
        stripped = re.sub(rf"{_RESPONSE_TAIL[form]}\s*\Z", "", stripped)
    if stripped == text or not stripped.strip():
        return text
    return stripped.strip()


def strip_record(record: Record, form: str) -> Record:
    """`record` without the baked-in template `form`: a new record, or the same one when it is not in that form.

    Only prompt/response records are stripped; a baked system text is kept unless the record has its own.

    >>> strip_record(Record("f", 1, "qa", prompt="### Question:\\n2+2?\\n\\n### Answer:", response="4"), "qa").prompt
    '2+2?'
    """
    unbaked = STRIPPERS[form](record.prompt) if record.kind == "pair" else None
    if unbaked is None:
        return record
    return dataclasses.replace(record, prompt=unbaked.prompt,
                               input="\n\n".join(part for part in (unbaked.input, record.input) if part),
                               system=record.system or unbaked.system,
                               response=strip_response(record.response, form))


def strip_prompt(text: str, form: str | None) -> str:
    """A user's prompt without the markers of `form` (the one a run's training data was stripped of), else as is.

    >>> strip_prompt("### Question:\\n2+2?\\n\\n### Answer:", "qa"), strip_prompt("2+2?", "qa")
    ('2+2?', '2+2?')
    """
    unbaked = STRIPPERS[form](text) if form else None
    if unbaked is None:
        return text
    return "\n\n".join(part for part in (unbaked.system, unbaked.prompt, unbaked.input) if part)


def baked_form(records: list[Record]) -> tuple[str | None, int]:
    """The known form most prompts carry and how many carry it; (None, 0) when none does.

    >>> baked_form([Record("f", 1, "qa", prompt="### Question: 2+2?", response="4")])
    ('qa', 1)
    """
    counts: Counter = Counter()
    for record in records:
        if record.kind != "pair" or not _LEFTOVER.search(record.prompt):
            continue
        form = next((name for name, strip in STRIPPERS.items() if strip(record.prompt) is not None), None)
        if form:
            counts[form] += 1
    return counts.most_common(1)[0] if counts else (None, 0)


@dataclass(frozen=True)
class Stripped:
    """What `strip_templates` did to a file's records, with one record before and after."""

    setting: str
    """`data.strip_template` as applied: auto, true or false."""
    form: str | None
    """The form found in most prompts (see `STRIPPERS`), stripped or not; None when no prompt carries one."""
    carried: int
    """Records whose prompt carries that form."""
    records: int
    """Records it was stripped from (0 when the setting kept them as they are)."""
    total: int
    where: str = ""
    before: str = ""
    after: str = ""


def is_stripped(form: str | None, carried: int, total: int, setting: bool | str) -> bool:
    """Whether `data.strip_template` removes `form`, carried by `carried` of `total` records (see `strip_templates`).

    >>> is_stripped("qa", 6, 10, "auto"), is_stripped("qa", 5, 10, "auto"), is_stripped("qa", 1, 10, True)
    (True, False, True)
    """
    return form is not None and (setting is True or (setting == "auto" and carried * 2 > total))


def strip_templates(records: list[Record], setting: bool | str) -> tuple[list[Record], Stripped]:
    """Records without the baked-in form most of them carry, and what was done.

    `auto` strips a form that more than half of the records carry; `True` strips the most common form from every
    record carrying it, however few; `False` keeps every record as it is. Records in other forms stay as they are.

    >>> baked = Record("f", 1, "qa", prompt="### Question:\\n2+2?\\n\\n### Answer:", response="4")
    >>> records, stripped = strip_templates([baked], "auto")
    >>> records[0].prompt, stripped.form, stripped.records
    ('2+2?', 'qa', 1)
    """
    name = setting if isinstance(setting, str) else str(setting).lower()
    form, carried = baked_form(records)
    if not is_stripped(form, carried, len(records), setting):
        return list(records), Stripped(name, form, carried, 0, len(records))
    out = [strip_record(record, form) for record in records]
    changed = [(old, new) for old, new in zip(records, out) if new is not old]
    old, new = changed[0]
    return out, Stripped(name, form, carried, len(changed), len(records), where=old.where, before=old.prompt,
                         after=new.prompt)


def unbake(record: Record, form: str | None) -> Record:
    """A prompt record without the baked-in template `form` that training stripped from its data, else as is.

    A pair record is stripped as training stripped its records (`strip_record`); in a conversation each user
    turn in that form loses its markers, and a baked system text becomes the system turn when there is none.

    >>> from tunesmith.data.prompts import as_prompt_record
    >>> unbake(as_prompt_record("### Question:\\n2+2?\\n\\n### Answer:"), "qa").messages[0]
    Message(role='user', content='2+2?')
    """
    if form is None or record.kind == "text":
        return record
    if record.kind == "pair":
        return strip_record(record, form)
    messages, system = [], None
    for message in record.messages:
        unbaked = STRIPPERS[form](message.content) if message.role == "user" else None
        if unbaked is None:
            messages.append(message)
            continue
        messages.append(Message("user", "\n\n".join(p for p in (unbaked.prompt, unbaked.input) if p)))
        system = system or unbaked.system
    if system and not any(m.role == "system" for m in messages):
        messages.insert(0, Message("system", system))
    return dataclasses.replace(record, messages=tuple(messages))
