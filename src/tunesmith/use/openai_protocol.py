"""OpenAI's wire format as `tunesmith serve` speaks it: request bodies, the error body, usage, server-sent events.

Request bodies forbid unknown fields, as everywhere in tunesmith; every refusal is an `APIError` carrying
OpenAI's `{"error": {message, type, param, code}}` body, so the official clients raise their usual exceptions.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from tunesmith.use.generation import Generation


class APIError(HTTPException):
    """A refusal the client can fix, sent as OpenAI's `{"error": {...}}` body."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(status_code=status, detail=message)
        self.body = {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_response(status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                   code: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type, "param": param, "code": code}}, status)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPart(_Body):
    type: Literal["text"]
    text: str


class FunctionCall(_Body):
    name: str
    arguments: str
    """JSON text of the arguments object, as OpenAI sends it."""


class ToolCall(_Body):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Body):
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[TextPart] | None = None
    """May be null only in an assistant message that makes tool calls."""
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    refusal: str | None = None
    """Sent back by clients that resend a reply message as they got it; never rendered."""

    def text(self) -> str | None:
        if self.content is None or isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class FunctionSpec(_Body):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolSpec(_Body):
    """One entry of `tools`: a function the model may call, described by a JSON schema."""

    type: Literal["function"]
    function: FunctionSpec


class StreamOptions(_Body):
    include_usage: bool = False


class Sampling(_Body):
    """The fields chat and text completions share. None means "not sent": the server's limits decide."""

    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    n: int = Field(default=1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    user: str | None = None

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    tools: list[ToolSpec] | None = None
    tool_choice: Literal["auto", "none", "required"] | dict[str, Any] | None = None
    """`auto` (the default with tools) and `none` are served; `required` and a named function are refused."""
    parallel_tool_calls: bool | None = None
    """Accepted for compatibility: a model that writes several calls returns them all."""

    @property
    def offers_tools(self) -> bool:
        """True when the model is shown the tools and its calls are read back (tools given, tool_choice not none)."""
        return bool(self.tools) and self.tool_choice != "none"


class CompletionRequest(Sampling):
    prompt: str | list[str]


def stops(stop: str | list[str] | None) -> tuple[str, ...]:
    """A request's stop sequences as a tuple (empty ones dropped).

    Raises:
        APIError: more than the 4 OpenAI allows.
    """
    if stop is None:
        return ()
    given = (stop,) if isinstance(stop, str) else tuple(stop)
    if len(given) > 4:
        raise APIError(400, "at most 4 stop sequences are allowed", param="stop")
    return tuple(s for s in given if s)


def usage(generations: list[Generation]) -> dict:
    """Token counts of the choices of one request (every choice answers the same prompt: OpenAI counts it once)."""
    prompt = generations[0].num_prompt_tokens if generations else 0
    completion = sum(g.num_tokens for g in generations)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def error_param(loc: tuple) -> str | None:
    """The request field a validation error points at, dotted (`messages.0.role`), or None for the whole body."""
    parts = [str(p) for p in loc if p != "body"]
    return ".".join(parts) or None


def event(data: dict[str, Any]) -> str:
    """One server-sent event."""
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"
