"""An OpenAI-compatible HTTP server for a finetuned model: `/v1/models`, `/v1/chat/completions`, `/v1/completions`.

One worker thread owns the model (`tunesmith.use.batching`); the routes here only check requests, render prompts
and turn generations into OpenAI's reply shapes (`tunesmith.use.openai_protocol`). Everything a client sends is
bounded (body size, prompt length, `max_tokens`, `n`, queue length) and every refusal is a 4xx in OpenAI's
error shape.

Tool calling: a chat request's `tools` are rendered by the same template training used for tool records
(`tunesmith.prepare.templates`), and `<tool_call>` blocks in the answer come back as OpenAI's `tool_calls` with
finish_reason `tool_calls`; the client sends the results as `tool` messages. A call can only be read once the whole
answer is there, so a streamed request with tools gets its reply generated first and sent as one burst of events.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import re
import time
import uuid
from dataclasses import dataclass
from typing import AsyncIterator, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from tunesmith.config import ServeConfig
from tunesmith.data.records import Record
from tunesmith.data.shapes import DEFAULT_COLUMNS, to_messages
from tunesmith.data.tools import parse_tool_calls
from tunesmith.data.validate import tool_problems
from tunesmith.errors import DataError, TunesmithError
from tunesmith.prepare.templates import writes_tool_call_blocks
from tunesmith.use.batching import BatchWorker, Job
from tunesmith.use.generation import Generation, GenerationOptions, Generator
from tunesmith.use.openai_protocol import (
    APIError,
    ChatCompletionRequest,
    CompletionRequest,
    Sampling,
    error_param,
    error_response,
    event,
    stops,
    usage,
)


class _Guard:
    """ASGI middleware: checks the API key before anything else and caps the request body size."""

    def __init__(self, app, api_key: str | None, max_body_bytes: int):
        self.app, self.api_key, self.max_body_bytes = app, api_key, max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        if self.api_key is not None and scope["path"].startswith("/v1") and not self._authorized(headers):
            response = error_response(401, "Incorrect API key provided; send it as `Authorization: Bearer KEY`",
                                      code="invalid_api_key")
            return await response(scope, receive, send)
        length = headers.get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_body_bytes:
            return await self._too_large(scope, receive, send)
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_body_bytes:
                raise APIError(413, f"request body is larger than {self.max_body_bytes} bytes",
                               code="request_too_large")
            return message

        await self.app(scope, limited_receive, send)

    def _authorized(self, headers: dict) -> bool:
        scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        # compare_digest takes the same time wherever the strings differ, so the key cannot be guessed by timing
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self.api_key.encode())

    async def _too_large(self, scope, receive, send):
        response = error_response(413, f"request body is larger than {self.max_body_bytes} bytes",
                                  code="request_too_large")
        await response(scope, receive, send)


class _Service:
    """What the routes share: the model, the worker that runs it, and the server's limits."""

    def __init__(self, generator: Generator, limits: ServeConfig):
        self.generator, self.limits = generator, limits
        self.worker = BatchWorker(generator, limits.batch_size, limits.max_queue)
        self.context = generator.context_length
        self.created = int(time.time())

    def model_card(self) -> dict:
        return {"id": self.generator.name, "object": "model", "created": self.created, "owned_by": "tunesmith"}

    def options_for(self, body: Sampling, prompt_tokens: int) -> GenerationOptions:
        """The decoding a request asks for, within the server's limits and the context left after the prompt.

        Raises:
            APIError: `n` or `max_tokens` above the limits, or a prompt that leaves no room to answer.
        """
        limits, context = self.limits, self.context
        if body.n > limits.max_n:
            raise APIError(400, f"n={body.n} is more than this server allows ({limits.max_n})", param="n")
        room = context - prompt_tokens
        if room < 1:
            raise APIError(400, f"the prompt has {prompt_tokens} tokens; this model's context is {context}",
                           param="messages" if isinstance(body, ChatCompletionRequest) else "prompt",
                           code="context_length_exceeded")
        wanted = getattr(body, "max_completion_tokens", None) or body.max_tokens
        if wanted is not None and wanted > limits.max_tokens:
            raise APIError(400, f"max_tokens={wanted} is more than this server allows ({limits.max_tokens})",
                           param="max_tokens")
        if wanted is not None and wanted > room:
            raise APIError(400, f"the prompt ({prompt_tokens} tokens) plus max_tokens={wanted} exceeds this model's "
                           f"context of {context} tokens", param="max_tokens", code="context_length_exceeded")
        sample = bool(body.temperature)
        return GenerationOptions(
            max_new_tokens=wanted or min(limits.default_max_tokens, room), do_sample=sample,
            temperature=body.temperature if sample else 1.0, top_p=(body.top_p or 1.0) if sample else 1.0,
            seed=body.seed, stop=stops(body.stop))

    async def run(self, prompts: list[str], options: GenerationOptions) -> list[Generation]:
        loop = asyncio.get_running_loop()
        job = Job(prompts, options, stream=False, loop=loop, future=loop.create_future())
        self.worker.submit(job)
        try:
            return await job.future
        finally:
            job.cancelled.set()  # a client that went away no longer needs a place in the next batch

    def stream(self, prompts: list[str], options: GenerationOptions, chunk: Callable,
               include_usage: bool) -> StreamingResponse:
        job = Job(prompts, options, stream=True, loop=asyncio.get_running_loop(), events=asyncio.Queue())
        self.worker.submit(job)
        return StreamingResponse(_sse(job, chunk, include_usage), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    def chat_prompt(self, body: ChatCompletionRequest) -> str:
        """The rendered prompt of a chat request (`developer` counts as `system`), its tools included.

        Raises:
            APIError: the conversation does not end with the user or a tool result, a message or tool call is
                malformed, or the template refuses it.
        """
        if body.messages[-1].role not in ("user", "tool"):
            raise APIError(400, "the last message must come from the user (or be a tool result)", param="messages")
        try:
            return self.generator.render(chat_record(body))
        except (TunesmithError, ValueError) as e:
            raise APIError(400, str(e), param="messages") from None

    async def chat_completions(self, body: ChatCompletionRequest):
        check_tool_choice(body)
        prompt = self.chat_prompt(body)
        options = self.options_for(body, self.generator.count_tokens(prompt))
        reply_id, now, name = f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), self.generator.name
        # calls are read back only in the `<tool_call>` syntax; another model's own syntax stays text
        read_calls = body.offers_tools and writes_tool_call_blocks(self.generator.tokenizer)
        if body.stream and read_calls:
            generations = await self.run([prompt] * body.n, options)
            head = {"id": reply_id, "object": "chat.completion.chunk", "created": now, "model": name}
            events = buffered_chat_events(head, [reply_choice(i, g, True) for i, g in enumerate(generations)],
                                          usage(generations) if body.include_usage else None)
            return StreamingResponse(iter(events), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        if body.stream:
            def chunk(index, text, first=False, finish_reason=None):
                delta = {"role": "assistant", "content": ""} if first else ({"content": text} if text else {})
                return {"id": reply_id, "object": "chat.completion.chunk", "created": now, "model": name,
                        "choices": [{"index": index, "delta": delta, "logprobs": None,
                                     "finish_reason": finish_reason}]}
            return self.stream([prompt] * body.n, options, chunk, body.include_usage)
        generations = await self.run([prompt] * body.n, options)
        choices = [reply_choice(i, g, read_calls) for i, g in enumerate(generations)]
        return {"id": reply_id, "object": "chat.completion", "created": now, "model": name, "choices": choices,
                "usage": usage(generations)}

    async def completions(self, body: CompletionRequest):
        # A completion continues the raw text: no template, exactly what the client sent.
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        most = self.limits.max_n * self.limits.batch_size
        if not prompts or len(prompts) * body.n > most:
            raise APIError(400, f"send between 1 and {most} prompts x n", param="prompt")
        counts = [self.generator.count_tokens(p) for p in prompts]
        if 0 in counts:
            raise APIError(400, "a prompt is empty; send at least one character", param="prompt")
        options = self.options_for(body, max(counts))
        reply_id, now, name = f"cmpl-{uuid.uuid4().hex}", int(time.time()), self.generator.name
        expanded = [p for p in prompts for _ in range(body.n)]
        if body.stream:
            def chunk(index, text, first=False, finish_reason=None):
                return {"id": reply_id, "object": "text_completion", "created": now, "model": name,
                        "choices": [{"index": index, "text": text or "", "logprobs": None,
                                     "finish_reason": finish_reason}]}
            return self.stream(expanded, options, chunk, body.include_usage)
        generations = await self.run(expanded, options)
        counted = {"prompt_tokens": sum(counts), "completion_tokens": sum(g.num_tokens for g in generations)}
        counted["total_tokens"] = counted["prompt_tokens"] + counted["completion_tokens"]
        return {"id": reply_id, "object": "text_completion", "created": now, "model": name,
                "choices": [{"index": i, "text": g.text, "logprobs": None, "finish_reason": g.finish_reason}
                            for i, g in enumerate(generations)],
                "usage": counted}


def check_tool_choice(body: ChatCompletionRequest) -> None:
    """Raises APIError for a `tool_choice` this server cannot honour: it lets the model decide (`auto`) or shows
    no tools (`none`), but cannot force a call."""
    if body.tool_choice in (None, "auto", "none"):
        return
    raise APIError(400, f"tool_choice={body.tool_choice!r} is not supported: the model decides whether to call "
                        f"(auto, the default) or sees no tools (none)", param="tool_choice")


def _param(field: str | None) -> str:
    """A data field (`messages[2].tool_call_id`) as OpenAI's dotted param (`messages.2.tool_call_id`)."""
    return re.sub(r"\[(\d+)\]", r".\1", field or "messages")


def chat_record(body: ChatCompletionRequest) -> Record:
    """A chat request as the canonical record training saw: its messages through the same conversion and tool
    checks as a data file's (`developer` counts as `system`), with its tools unless tool_choice is `none`.

    Raises:
        APIError: a malformed message, call or tool (naming the field), or a tool result answering no call.
    """
    messages = []
    for m in body.messages:
        message = {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
        if m.tool_calls:
            message["tool_calls"] = [c.model_dump() for c in m.tool_calls]
        if m.tool_call_id is not None:
            message["tool_call_id"] = m.tool_call_id
        messages.append(message)
    row = {"messages": messages}
    if body.offers_tools:
        row["tools"] = [t.model_dump(exclude_none=True) for t in body.tools]
    try:
        record = to_messages(row, DEFAULT_COLUMNS["messages"], shape="messages", file="request", line=1)
    except DataError as e:
        problem = e.problems[0]
        raise APIError(400, f"{problem.field}: {problem.message}", param=_param(problem.field)) from None
    problems = tool_problems(record)
    if problems:
        raise APIError(400, f"{problems[0].field}: {problems[0].message}", param=_param(problems[0].field))
    return record


def reply_choice(index: int, generation: Generation, read_calls: bool) -> dict:
    """One choice of a chat reply: the answer's text, or, when it holds `<tool_call>` blocks and tools were
    offered, OpenAI's `tool_calls` (arguments as JSON text) with finish_reason `tool_calls`.

    >>> reply_choice(0, Generation('<tool_call>{"name": "now", "arguments": {}}</tool_call>', 5, 9, "stop"),
    ...              True)["finish_reason"]
    'tool_calls'
    """
    content, calls = parse_tool_calls(generation.text) if read_calls else (generation.text, [])
    message = {"role": "assistant", "content": content}
    if calls:
        message["content"] = content or None
        message["tool_calls"] = [{"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                                  "function": {"name": c.name, "arguments": c.arguments}} for c in calls]
    return {"index": index, "message": message, "logprobs": None,
            "finish_reason": "tool_calls" if calls else generation.finish_reason}


def buffered_chat_events(head: dict, choices: list[dict], counted: dict | None) -> list[str]:
    """A finished chat reply as the server-sent events of a stream (with tools, a call can only be read from the
    whole answer, so it is generated first and sent at once): per choice the role with its content or
    `tool_calls` deltas (each call with its `index`), then the finish reason; usage on request; [DONE].

    >>> import json
    >>> events = buffered_chat_events({"id": "x"}, [{"index": 0, "message": {"role": "assistant", "content": "Hi"},
    ...                                               "finish_reason": "stop"}], None)
    >>> [json.loads(e[6:])["choices"][0]["delta"] for e in events[:2]], events[2]
    ([{'role': 'assistant', 'content': 'Hi'}, {}], 'data: [DONE]\\n\\n')
    """
    def chunk(index: int, delta: dict, finish_reason: str | None = None) -> str:
        return event({**head, "choices": [{"index": index, "delta": delta, "logprobs": None,
                                           "finish_reason": finish_reason}]})

    events = []
    for choice in choices:
        message = choice["message"]
        delta = {"role": "assistant", "content": message["content"]}
        if message.get("tool_calls"):
            delta["tool_calls"] = [{"index": k, **call} for k, call in enumerate(message["tool_calls"])]
        events += [chunk(choice["index"], delta), chunk(choice["index"], {}, choice["finish_reason"])]
    if counted is not None:
        events.append(event({**head, "choices": [], "usage": counted}))
    return events + ["data: [DONE]\n\n"]


async def _sse(job: Job, chunk: Callable, include_usage: bool) -> AsyncIterator[str]:
    """Server-sent events: a chunk per text piece, a final chunk per choice, usage on request, [DONE]."""
    ends: list[Generation] = []
    try:
        for index in range(len(job.prompts)):
            yield event(chunk(index, None, first=True))
        while True:
            kind, index, value = await job.events.get()
            if kind == "delta":
                yield event(chunk(index, value))
            elif kind == "end":
                ends.append(value)
                yield event(chunk(index, None, finish_reason=value.finish_reason))
            elif kind == "error":
                yield event({"error": {"message": f"the model failed: {value}", "type": "server_error",
                                       "param": None, "code": None}})
            else:
                break
        if include_usage and ends:
            yield event({**chunk(0, None), "choices": [], "usage": usage(ends)})
        yield "data: [DONE]\n\n"
    finally:
        job.cancelled.set()


def _add_error_handlers(app: FastAPI) -> None:
    """Every error leaves in OpenAI's shape: 4xx for what the client can fix, 500 when the model failed."""

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        if isinstance(exc, APIError):
            return JSONResponse(exc.body, exc.status_code)
        return error_response(exc.status_code, str(exc.detail),
                              code="not_found" if exc.status_code == 404 else None)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        if first.get("type") == "json_invalid":
            return error_response(400, "the request body is not valid JSON")
        if tuple(first.get("loc", ())) == ("body",):
            return error_response(400, "the request body must be a JSON object (with Content-Type: application/json)")
        param = error_param(tuple(first.get("loc", ())))
        message = "; ".join(f"{error_param(tuple(e.get('loc', ()))) or 'body'}: {e['msg']}" for e in errors[:5])
        return error_response(400, message, param=param)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        return error_response(500, f"the model failed: {type(exc).__name__}: {exc}", type="server_error")


def _add_routes(app: FastAPI, service: _Service) -> None:
    @app.get("/health")
    async def health():
        return {"status": "ok", "model": service.generator.name}

    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [service.model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str):
        if model_id != service.generator.name:
            raise APIError(404, f"model {model_id!r} is not served here; this server has {service.generator.name!r}",
                           param="model", code="model_not_found")
        return service.model_card()

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest):
        return await service.chat_completions(body)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest):
        return await service.completions(body)


def create_app(generator: Generator, api_key: str | None = None, limits: ServeConfig | None = None) -> FastAPI:
    """The FastAPI app serving `generator`; its worker thread starts and stops with the app."""
    service = _Service(generator, limits or ServeConfig())

    async def lifespan(app):
        service.worker.start()
        yield
        service.worker.stop()

    app = FastAPI(title="tunesmith", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(_Guard, api_key=api_key, max_body_bytes=service.limits.max_body_bytes)
    _add_error_handlers(app)
    _add_routes(app, service)
    return app


@dataclass(frozen=True)
class Server:
    """A loaded model behind its app, not yet listening: the CLI says where it will be, then calls `run`."""

    app: FastAPI
    name: str
    host: str
    port: int
    api_key: str | None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    @property
    def is_open(self) -> bool:
        """True when anyone on the network can use the model: a non-loopback address and no API key."""
        try:
            loopback = ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            loopback = self.host == "localhost"
        return not loopback and self.api_key is None

    def run(self) -> None:
        """Serve until interrupted (uvicorn, one process: the model is loaded once)."""
        import uvicorn

        uvicorn.run(self.app, host=self.host, port=self.port, log_level="warning", access_log=False)


def build_server(generator: Generator, limits: ServeConfig, api_key: str | None = None) -> Server:
    """The server for `generator` at `limits.host:limits.port`."""
    return Server(create_app(generator, api_key=api_key, limits=limits), generator.name, limits.host, limits.port,
                  api_key)
