"""Tool calls in a model's text: the `<tool_call>{"name", "arguments"}</tool_call>` blocks of Hermes-style templates.

The shipped tool template (`tunesmith/prepare/tool_template.jinja`) and the chat templates of Qwen2.5, Hermes and
SmolLM3 write calls this way; `parse_tool_calls` reads them back from what a model generated, so `serve` can
return OpenAI's `tool_calls`. Pure text rules, no tokenizer.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

__all__ = ["CALL_CLOSE", "CALL_OPEN", "ParsedCall", "parse_tool_calls"]

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
_BLOCK = re.compile(re.escape(CALL_OPEN) + r"(.*?)(?:" + re.escape(CALL_CLOSE) + r"|\Z)", re.DOTALL)


@dataclass(frozen=True)
class ParsedCall:
    """One call found in generated text: the function's name and its arguments as JSON text of an object."""

    name: str
    arguments: str


def _as_call(block: str) -> ParsedCall | None:
    """A block's JSON as a call, or None when it is no `{"name": str, "arguments": object}` (a model can write
    anything; a broken block stays part of the text rather than becoming a call nobody can run)."""
    try:
        value = json.loads(block)
    except json.JSONDecodeError:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return None
    arguments = value.get("arguments", value.get("parameters", {}))
    if isinstance(arguments, str):  # some models write the arguments as JSON text inside the JSON
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return None
    if not isinstance(arguments, dict):
        return None
    return ParsedCall(value["name"], json.dumps(arguments, ensure_ascii=False))


def parse_tool_calls(text: str) -> tuple[str, list[ParsedCall]]:
    """The text outside the call blocks (stripped) and the calls, in order; a last block the model did not
    close (it stopped at its end token) still counts.

    >>> parse_tool_calls('Let me look.\\n<tool_call>\\n{"name": "weather", "arguments": {"city": "Oslo"}}\\n</tool_call>')
    ('Let me look.', [ParsedCall(name='weather', arguments='{"city": "Oslo"}')])
    >>> parse_tool_calls("No calls here.")
    ('No calls here.', [])
    """
    calls: list[ParsedCall] = []
    kept: list[str] = []
    position = 0
    for match in _BLOCK.finditer(text):
        call = _as_call(match.group(1).strip())
        if call is None:
            continue
        kept.append(text[position:match.start()])
        position = match.end()
        calls.append(call)
    kept.append(text[position:])
    return "".join(kept).strip() if calls else text, calls
