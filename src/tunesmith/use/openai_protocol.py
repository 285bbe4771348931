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


class ChatMessage(_Body):
    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


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
