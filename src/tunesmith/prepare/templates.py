"""Prompt templates: how a canonical record becomes training text, split into trainable and masked parts.

A template turns a `Record` into `Segment`s: text the model only reads (prompt, chat scaffolding) and text it
learns to write (each answer, ending with the end token so the model learns to stop). Tokenization encodes
each segment on its own and masks by segment, so masking never depends on finding token ids in the output.

Prompt templates are plain functions in `PROMPT_TEMPLATES` (pair record -> prompt text); `chat` uses the
tokenizer's own chat template instead and is the only one that handles multi-turn conversations.

A conversation with tools (`tools`, `tool_calls`, `tool` turns) goes through a chat template that renders them:
the model's own when it does (`supports_tools`: it shows the functions, the calls and their results), otherwise
the shipped `tool_template.jinja` (ChatML with Hermes-style `<tool_call>` blocks). The calls are part of the
assistant's trainable answer; tool results are prompt.
"""

from __future__ import annotations

import json
import re
import weakref
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

from tunesmith.config import TemplateConfig
from tunesmith.data import Record, as_messages, as_pair
from tunesmith.data.records import has_tool_calls, message_to_dict
from tunesmith.errors import ConfigError, DataError

__all__ = ["PROMPT_TEMPLATES", "TOOL_TEMPLATE_FILE", "Segment", "end_token", "jinja_source", "render_prompt",
           "render_segments", "resolve_template_name", "shipped_tool_template", "supports_tools", "tool_chat_template",
           "writes_tool_call_blocks"]

# The exact wording of tatsu-lab/stanford_alpaca train.py (PROMPT_DICT). The answer follows "### Response:"
# directly, as in Stanford's training text (prompt + output + eos).
ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
)
ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:"
)
# The answer starts on the line after "### Answer:"; the same text is used for training and generation.
QA = "### Question:\n{question}\n\n### Answer:\n"


@dataclass(frozen=True)
class Segment:
    """A piece of the training text; `trainable` pieces carry the loss (answers and their end token)."""

    text: str
    trainable: bool


def _with_system(record: Record, prompt: str) -> str:
    """A record's own system text, when it has one, goes first, separated by a blank line."""
    return f"{record.system}\n\n{prompt}" if record.system else prompt


def alpaca_prompt(record: Record, template: TemplateConfig) -> str:
    """Stanford Alpaca wording, with or without input.

    >>> alpaca_prompt(Record("f", 1, "alpaca", prompt="Add 2+2."), TemplateConfig())[-40:]
    'request.\\n\\n### Instruction:\\nAdd 2+2.\\n\\n### Response:'
    """
    text = (ALPACA_WITH_INPUT if record.input else ALPACA_NO_INPUT).format(instruction=record.prompt,
                                                                           input=record.input)
    return _with_system(record, text)


def qa_prompt(record: Record, template: TemplateConfig) -> str:
    """`### Question:` / `### Answer:` headings; an input is appended to the question after a blank line.

    >>> qa_prompt(Record("f", 1, "qa", prompt="2+2?"), TemplateConfig())
    '### Question:\\n2+2?\\n\\n### Answer:\\n'
    """
    question = f"{record.prompt}\n\n{record.input}" if record.input else record.prompt
    return _with_system(record, QA.format(question=question))


def plain_prompt(record: Record, template: TemplateConfig) -> str:
    """The prompt exactly as given (an input follows after a blank line): for data that is already templated.

    >>> plain_prompt(Record("f", 1, "prompt_completion", prompt="Q: 2+2?\\nA:"), TemplateConfig())
    'Q: 2+2?\\nA:'
    """
    return _with_system(record, f"{record.prompt}\n\n{record.input}" if record.input else record.prompt)


JINJA_VARIABLES = ("prompt", "input", "system")


def jinja_source(template: TemplateConfig) -> tuple[str, str]:
    """(where, text) of the user's Jinja template: `template.jinja` names a file when one exists there,
    otherwise it is the template text itself.

    >>> jinja_source(TemplateConfig(name="jinja", jinja="Q: {{ prompt }}"))
    ('template.jinja', 'Q: {{ prompt }}')
    """
    source = template.jinja or ""
    if "\n" not in source and len(source) < 4096:
        try:
            path = Path(source).expanduser()
            if path.is_file():
                return str(path), path.read_text(encoding="utf-8")
        except OSError:
            pass
    return "template.jinja", source


@lru_cache(maxsize=16)
def _compile_jinja(where: str, text: str):
    """Compile a user template in a sandbox (it is user text, so it gets no access to Python internals).

    Raises:
        ConfigError: the template does not parse.
    """
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    # What the user writes is what the prompt is: a trailing newline (e.g. after "Answer:") is kept.
    env = ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    try:
        return where, env.from_string(text)
    except jinja2.TemplateSyntaxError as e:
        raise ConfigError(f"{where}: line {e.lineno}: invalid Jinja template: {e.message}") from None


def jinja_prompt(record: Record, template: TemplateConfig) -> str:
    """A user Jinja template (text or file) rendering the prompt from `prompt`, `input` and `system`.

    >>> jinja_prompt(Record("f", 1, "qa", prompt="2+2?"), TemplateConfig(name="jinja", jinja="Q: {{ prompt }}\\nA:"))
    'Q: 2+2?\\nA:'

    Raises:
        ConfigError: the template does not parse or uses a variable other than prompt, input, system.
    """
    import jinja2

    where, compiled = _compile_jinja(*jinja_source(template))
    try:
        return compiled.render(prompt=record.prompt, input=record.input, system=record.system or "")
    except jinja2.UndefinedError as e:
        raise ConfigError(f"{where}: {e.message}; a template can use {', '.join(JINJA_VARIABLES)}") from None
    except jinja2.TemplateError as e:
        raise ConfigError(f"{where}: rendering {record.where} failed: {e}") from None


PROMPT_TEMPLATES: dict[str, Callable[[Record, TemplateConfig], str]] = {
    "alpaca": alpaca_prompt,
    "qa": qa_prompt,
    "none": plain_prompt,
    "jinja": jinja_prompt,
}
"""Template name -> function rendering a pair record's prompt (everything before the answer)."""


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def resolve_template_name(template: TemplateConfig, tokenizer) -> str:
    """The template actually used: `auto` is `chat` when the tokenizer has a chat template, else `alpaca`.

    Raises:
        ConfigError: `chat` was asked for but the tokenizer has no chat template.
    """
    if template.name == "auto":
        return "chat" if has_chat_template(tokenizer) else "alpaca"
    if template.name == "chat" and not has_chat_template(tokenizer):
        raise ConfigError(f"template.name=chat: this model's tokenizer has no chat template; "
                          f"use one of {', '.join(PROMPT_TEMPLATES)}")
    return template.name


def end_token(tokenizer) -> str:
    """The text of the token that ends an answer (the tokenizer's end-of-sequence token).

    Raises:
        ConfigError: the tokenizer has no end-of-sequence token, so a model could never learn to stop.
    """
    if not tokenizer.eos_token:
        raise ConfigError("the model's tokenizer has no end-of-sequence token; answers could never end")
    return tokenizer.eos_token


def _pair_for_prompt_template(record: Record, name: str) -> Record:
    try:
        return as_pair(record)
    except ValueError:
        raise DataError(f"a multi-turn conversation cannot use template.name={name}; "
                        f"use template.name=chat", file=record.file, line=record.line) from None


def _template_message(message) -> dict:
    """A turn as chat templates take it: OpenAI's dict, with call arguments as an object (what transformers'
    templates expect; validation made sure they parse)."""
    data = message_to_dict(message)
    for call in data.get("tool_calls") or ():
        call["function"]["arguments"] = json.loads(call["function"]["arguments"])
    return data


def _chat_messages(record: Record, template: TemplateConfig) -> list[dict]:
    """Role/content dicts for the chat template; the configured system prompt is used only when the record
    has no system message of its own."""
    messages = [_template_message(m) for m in as_messages(record)]
    if template.system_prompt and not any(m["role"] == "system" for m in messages):
        messages.insert(0, {"role": "system", "content": template.system_prompt})
    return messages


TOOL_TEMPLATE_FILE = Path(__file__).with_name("tool_template.jinja")
"""The shipped tool-calling chat template (package data)."""


@lru_cache(maxsize=1)
def shipped_tool_template() -> str:
    """The text of `tool_template.jinja`."""
    return TOOL_TEMPLATE_FILE.read_text(encoding="utf-8")


_PROBE_TOOLS = [{"type": "function", "function": {
    "name": "tunesmith_probe", "description": "probe",
    "parameters": {"type": "object", "properties": {"probe_argument": {"type": "string"}}}}}]
_PROBE_MESSAGES = [
    {"role": "user", "content": "q"},
    {"role": "assistant", "content": None, "tool_calls": [{"id": "call_probe", "type": "function", "function": {
        "name": "tunesmith_probe", "arguments": {"probe_argument": "probe_value"}}}]},
    {"role": "tool", "tool_call_id": "call_probe", "content": "probe_result"},
]
_probed: dict[str, str] = {}


def _probe(tokenizer) -> str:
    """The model's own template's rendering of a call and its result with tools offered ("" when it fails)."""
    source = getattr(tokenizer, "chat_template", None)
    if not isinstance(source, str) or not source:
        return ""
    if source not in _probed:
        try:
            offered = tokenizer.apply_chat_template(_PROBE_MESSAGES[:1], tools=_PROBE_TOOLS, tokenize=False)
            text = tokenizer.apply_chat_template(_PROBE_MESSAGES, tools=_PROBE_TOOLS, tokenize=False)
        except Exception:  # a template that cannot take tool turns at all (content None, unknown role ...)
            offered = text = ""
        _probed[source] = text if "tunesmith_probe" in offered else ""
    return _probed[source]


def supports_tools(tokenizer) -> bool:
    """True when the model's own chat template renders tools: the offered functions, an assistant's call with
    its arguments, and the tool's result all appear in its text (SmolLM2's template shows none of them).
    """
    text = _probe(tokenizer)
    return all(part in text for part in ("probe_argument", "probe_value", "probe_result"))


def tool_chat_template(tokenizer) -> str | None:
    """The chat template a conversation with tools is rendered with: None for the model's own (it supports
    tools), else the shipped `tool_template.jinja`."""
    return None if supports_tools(tokenizer) else shipped_tool_template()


def writes_tool_call_blocks(tokenizer) -> bool:
    """True when calls are written as `<tool_call>{...}</tool_call>` blocks (`tunesmith.data.tools` parses those):
    the shipped template, or a model's own template in that style (Qwen2.5, Hermes)."""
    return not supports_tools(tokenizer) or "<tool_call>" in _probe(tokenizer)


def _check_tool_template(record: Record, template: TemplateConfig) -> None:
    """Tool calls need a chat template: a prompt template (alpaca, qa, none, jinja) would drop them."""
    if template.name not in ("auto", "chat"):
        raise DataError(f"a conversation with tool calls cannot use template.name={template.name}; use "
                        f"template.name=chat (or auto): the model's own chat template when it renders tools, "
                        f"tunesmith's tool template otherwise", file=record.file, line=record.line)


def _apply_chat_template(tokenizer, messages: list[dict], record: Record, add_generation_prompt: bool) -> str:
    import jinja2

    tools = {}
    if has_tool_calls(record):
        tools = {"tools": list(record.tools) or None, "chat_template": tool_chat_template(tokenizer)}
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                             **tools)
    except jinja2.TemplateError as e:  # raised by the model's own template, e.g. "roles must alternate"
        raise DataError(f"the model's chat template rejected this conversation: {e}",
                        file=record.file, line=record.line) from None


def _not_prefix_stable(record: Record, turn: int) -> ConfigError:
    return ConfigError(f"{record.where}: the model's chat template renders earlier turns differently once "
                       f"assistant turn {turn} is added (it is not prefix-stable), so the answers cannot be "
                       f"masked reliably; use single-turn data with template.name=alpaca/qa/jinja, or a model "
                       f"whose chat template keeps earlier turns unchanged")


def chat_segments(record: Record, template: TemplateConfig, tokenizer) -> list[Segment]:
    """Segments of a conversation rendered by the tokenizer's chat template; every assistant turn is trainable.

    Each prefix of the conversation is rendered and must be a prefix of the next rendering, so the text between
    "prompt up to assistant turn i" and "conversation including turn i" is exactly that turn's answer. The answer
    is trainable up to and including the end token (`<|im_end|>`); what the template adds after it (a newline)
    is not. When the template closes turns with a token other than the end token, the whole turn is trainable.

    With SmolLM2, user "Hi" and assistant "Hey" give
    `<|im_start|>system ... <|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n` (masked),
    `Hey<|im_end|>` (trainable), `\\n` (masked).

    Raises:
        ConfigError: the chat template is not prefix-stable.
        DataError: the chat template rejects the conversation.
    """
    messages = _chat_messages(record, template)
    if not has_tool_calls(record):
        fast = _filled_segments(messages, record, tokenizer)
        if fast is not None:
            return fast
    return _rendered_segments(messages, record, tokenizer)


def _rendered_segments(messages: list[dict], record: Record, tokenizer) -> list[Segment]:
    """`chat_segments` the slow, general way: every prefix of the conversation rendered by Jinja."""
    end = end_token(tokenizer)
    segments: list[Segment] = []
    done = ""
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = _apply_chat_template(tokenizer, messages[:i], record, add_generation_prompt=True)
        after = _apply_chat_template(tokenizer, messages[: i + 1], record, add_generation_prompt=False)
        if not before.startswith(done) or not after.startswith(before):
            raise _not_prefix_stable(record, i)
        answer = after[len(before):]
        cut = answer.rfind(end)
        cut = len(answer) if cut < 0 else cut + len(end)
        segments += [Segment(before[len(done):], False), Segment(answer[:cut], True), Segment(answer[cut:], False)]
        done = after
    full = _apply_chat_template(tokenizer, messages, record, add_generation_prompt=False)
    if not full.startswith(done):
        raise _not_prefix_stable(record, len(messages) - 1)
    segments.append(Segment(full[len(done):], False))
    return _merge(segments)


_HOLE = "\ue000{}\ue001"
"""A message's content in a skeleton: private-use characters, which no template treats specially."""
_HOLES = re.compile("\ue000(\\d+)\ue001")
_PROBES = (" \n Probe {0}: <b>{{{{ x }}}}</b> 'q' \"q\" \\ {{% ünï ✓\t", "probe{0}")
"""Contents a skeleton must render exactly like Jinja does before it is used: edge whitespace (a template that
trims it), markup and Jinja syntax (a template that escapes or parses content), plain text."""
VERIFIED_RECORDS = 8
"""Records of each conversation form rendered both ways and compared before the skeleton alone is trusted."""

_skeletons: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


@dataclass
class _Skeleton:
    """The segments of one conversation form (its roles, in order) with holes for the contents, and how many real
    records have been checked against Jinja so far."""

    segments: tuple[Segment, ...]
    verified: int = 0


def _fill(segments, contents: list[str]) -> list[Segment]:
    """The skeleton's segments with each hole replaced by its message's content."""
    return [Segment(_HOLES.sub(lambda m: contents[int(m.group(1))], s.text), s.trainable) for s in segments]


def _with_contents(messages: list[dict], contents: list[str]) -> list[dict]:
    return [{"role": m["role"], "content": c} for m, c in zip(messages, contents)]


def _build_skeleton(messages: list[dict], record: Record, tokenizer) -> _Skeleton | None:
    """The form's skeleton, rendered once by Jinja with holes for the contents; None when the template does not
    pass the contents through untouched (the probes render differently), so Jinja renders every record."""
    try:
        segments = tuple(_rendered_segments(_with_contents(messages, [_HOLE.format(i) for i in
                                                                     range(len(messages))]), record, tokenizer))
        for probe in _PROBES:
            contents = [probe.format(i) for i in range(len(messages))]
            if _fill(segments, contents) != _rendered_segments(_with_contents(messages, contents), record, tokenizer):
                return None
    except (ConfigError, DataError):
        return None
    return _Skeleton(segments)


def _filled_segments(messages: list[dict], record: Record, tokenizer) -> list[Segment] | None:
    """`chat_segments` without Jinja: the record's contents put into the skeleton of its conversation form (the
    chat template rendered once per form). Jinja costs about 2 ms a record, the skeleton a few microseconds, and
    the text is the same: each skeleton is checked on probe contents and on the first `VERIFIED_RECORDS` records of
    its form, and falls back to Jinja for good on any difference. None when the record is not eligible (a content
    holding the end token or a hole marker, a message with more than role and content) or the form has no skeleton.
    """
    end = end_token(tokenizer)
    contents = [m.get("content") for m in messages]
    if any(len(m) != 2 or not isinstance(c, str) or "\ue000" in c or end in c for m, c in zip(messages, contents)):
        return None
    forms = _skeletons.setdefault(tokenizer, {})
    key = (getattr(tokenizer, "chat_template", None), end, tuple(m["role"] for m in messages))
    if key not in forms:
        forms[key] = _build_skeleton(messages, record, tokenizer)
    skeleton = forms[key]
    if skeleton is None:
        return None
    filled = _merge(_fill(skeleton.segments, contents))  # a content left empty may empty its segment
    if skeleton.verified < VERIFIED_RECORDS:
        rendered = _rendered_segments(messages, record, tokenizer)
        if filled != rendered:
            forms[key] = None
            return rendered
        skeleton.verified += 1
    return filled


def _merge(segments: list[Segment]) -> list[Segment]:
    """Drop empty segments and join neighbours of the same kind (fewer tokenizer boundaries)."""
    merged: list[Segment] = []
    for segment in segments:
        if not segment.text:
            continue
        if merged and merged[-1].trainable == segment.trainable:
            merged[-1] = Segment(merged[-1].text + segment.text, segment.trainable)
        else:
            merged.append(segment)
    return merged


def render_segments(record: Record, template: TemplateConfig, tokenizer) -> list[Segment]:
    """The training text of a record as masked and trainable segments; the answer ends with the end token.

    >>> render_segments(Record("f", 1, "qa", prompt="2+2?", response="4"), TemplateConfig(name="qa"), tok)
    [Segment(text='### Question:\\n2+2?\\n\\n### Answer:\\n', trainable=False), Segment(text='4<|im_end|>', trainable=True)]

    A text record is one trainable segment (its text and the end token).

    Raises:
        ConfigError: the template cannot be used with this tokenizer.
        DataError: a multi-turn conversation with a prompt template, or one the chat template rejects.
    """
    end = end_token(tokenizer)
    if record.kind == "text":
        return [Segment((record.text or "") + end, True)]
    if has_tool_calls(record):
        _check_tool_template(record, template)
        return chat_segments(record, template, tokenizer)
    name = resolve_template_name(template, tokenizer)
    if name == "chat":
        return chat_segments(record, template, tokenizer)
    pair = _pair_for_prompt_template(record, name)
    return _merge([Segment(PROMPT_TEMPLATES[name](pair, template), False), Segment(pair.response + end, True)])


def render_prompt(record: Record, template: TemplateConfig, tokenizer) -> str:
    """Everything up to where the model starts answering, for generation (the record's own answer, if any, and
    anything after it are left out; a conversation ending with a user turn gets the assistant header).

    >>> render_prompt(Record("f", 1, "qa", prompt="2+2?", response="4"), TemplateConfig(name="qa"), tok)
    '### Question:\\n2+2?\\n\\n### Answer:\\n'

    Raises:
        DataError: a text record (it has no prompt), or a multi-turn conversation with a prompt template.
    """
    if record.kind == "text":
        raise DataError("a plain-text record has no prompt to answer", file=record.file, line=record.line)
    if has_tool_calls(record):
        _check_tool_template(record, template)
    name = "chat" if has_tool_calls(record) else resolve_template_name(template, tokenizer)
    if name != "chat":
        return PROMPT_TEMPLATES[name](_pair_for_prompt_template(record, name), template)
    messages = _chat_messages(record, template)
    if messages and messages[-1]["role"] == "assistant":
        messages = messages[:-1]
    return _apply_chat_template(tokenizer, messages, record, add_generation_prompt=True)
