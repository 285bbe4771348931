"""An OpenAI-compatible HTTP server for a finetuned model: `/v1/models`, `/v1/chat/completions`, `/v1/completions`.

One worker thread owns the model. Requests wait in a bounded queue; the worker takes every waiting request
with the same decoding options (up to `batch_size` answers) and answers them in one `generate_batch` call, so
the model never runs two generations at once and concurrent clients share batches. Streaming requests run on
the same worker, one at a time. Everything a client sends is bounded (body size, prompt length, `max_tokens`,
`n`, queue length) and every refusal is a 4xx in OpenAI's error shape, so the official clients raise their
usual exceptions.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import queue
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from tunesmith.config import ServeConfig
from tunesmith.errors import TunesmithError
from tunesmith.use.generation import Generation, GenerationOptions, Generator


class APIError(HTTPException):
    """A refusal the client can fix, sent as OpenAI's `{"error": {...}}` body."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(status_code=status, detail=message)
        self.body = {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_response(status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                   code: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type, "param": param, "code": code}}, status)


# ---- request bodies: unknown fields are errors, as everywhere in tunesmith ----

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


class _Sampling(_Body):
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


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)


class CompletionRequest(_Sampling):
    prompt: str | list[str]


# ---- the worker that owns the model ----

@dataclass(eq=False)
class Job:
    """Answers one request wants: one prompt per choice, delivered to the request's event loop."""

    prompts: list[str]
    options: GenerationOptions
    stream: bool
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future | None = None
    events: asyncio.Queue | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)

    def deliver(self, generations: list[Generation] | None = None, error: BaseException | None = None) -> None:
        def settle():
            if self.future.done():  # the client went away
                return
            if error is not None:
                self.future.set_exception(error)
            else:
                self.future.set_result(generations)
        self.loop.call_soon_threadsafe(settle)

    def emit(self, event: tuple) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)


class BatchWorker:
    """The only thread that touches the model: it batches waiting requests with equal decoding options."""

    def __init__(self, generator: Generator, batch_size: int, max_queue: int):
        self.generator, self.batch_size = generator, batch_size
        self._queue: queue.Queue[Job | None] = queue.Queue(maxsize=max_queue)
        self._held: deque[Job] = deque()
        self._thread = threading.Thread(target=self._loop, name="tunesmith-model", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)

    def submit(self, job: Job) -> None:
        """Queue a job, or refuse with 429 when too many are waiting already."""
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise APIError(429, "the server has too many waiting requests; retry shortly",
                           type="rate_limit_error", code="queue_full") from None

    def _next(self, block: bool) -> Job | None:
        if self._held:
            return self._held.popleft()
        return self._queue.get() if block else self._queue.get_nowait()

    def _loop(self) -> None:
        while True:
            job = self._next(block=True)
            if job is None:
                return
            if job.cancelled.is_set():
                continue
            if job.stream:
                self._run_stream(job)
                continue
            batch, stopping = self._gather(job)
            self._run_batch(batch)
            if stopping:
                return

    def _gather(self, first: Job) -> tuple[list[Job], bool]:
        """`first` plus waiting jobs with the same options, up to batch_size answers; others wait their turn."""
        batch, size, skipped, stopping = [first], len(first.prompts), [], False
        while size < self.batch_size:
            try:
                job = self._next(block=False)
            except queue.Empty:
                break
            if job is None:
                stopping = True
                break
            if not job.stream and job.options == first.options and size + len(job.prompts) <= self.batch_size:
                batch.append(job)
                size += len(job.prompts)
            else:
                skipped.append(job)
        self._held.extendleft(reversed(skipped))
        return batch, stopping

    def _run_batch(self, batch: list[Job]) -> None:
        from tunesmith.use.generation import generate_batch

        live = [job for job in batch if not job.cancelled.is_set()]
        prompts = [p for job in live for p in job.prompts]
        try:
            results = generate_batch(self.generator.model, self.generator.tokenizer, prompts, live[0].options) \
                if prompts else []
        except Exception as e:  # the model failed: every waiting client hears about it, the server lives on
            for job in live:
                job.deliver(error=e)
            return
        start = 0
        for job in live:
            job.deliver(results[start:start + len(job.prompts)])
            start += len(job.prompts)

    def _run_stream(self, job: Job) -> None:
        try:
            for index, prompt in enumerate(job.prompts):
                with self.generator.stream(prompt, job.options) as stream:
                    for piece in stream:
                        if job.cancelled.is_set():
                            return
                        job.emit(("delta", index, piece))
                    job.emit(("end", index, stream.generation))
        except Exception as e:
            job.emit(("error", 0, e))
        finally:
            job.emit(("done", 0, None))


# ---- the app ----

def _usage(generations: list[Generation]) -> dict:
    # Every choice answers the same prompt; OpenAI counts that prompt once.
    prompt = generations[0].num_prompt_tokens if generations else 0
    completion = sum(g.num_tokens for g in generations)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _error_param(loc: tuple) -> str | None:
    parts = [str(p) for p in loc if p != "body"]
    return ".".join(parts) or None


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


def _stops(stop: str | list[str] | None) -> tuple[str, ...]:
    if stop is None:
        return ()
    stops = (stop,) if isinstance(stop, str) else tuple(stop)
    if len(stops) > 4:
        raise APIError(400, "at most 4 stop sequences are allowed", param="stop")
    return tuple(s for s in stops if s)


def create_app(generator: Generator, api_key: str | None = None, limits: ServeConfig | None = None) -> FastAPI:
    """The FastAPI app serving `generator`; its worker thread starts and stops with the app."""
    limits = limits or ServeConfig()
    worker = BatchWorker(generator, limits.batch_size, limits.max_queue)
    context = generator.context_length
    created = int(time.time())

    async def lifespan(app):
        worker.start()
        yield
        worker.stop()

    app = FastAPI(title="tunesmith", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(_Guard, api_key=api_key, max_body_bytes=limits.max_body_bytes)

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
        param = _error_param(tuple(first.get("loc", ())))
        message = "; ".join(f"{_error_param(tuple(e.get('loc', ()))) or 'body'}: {e['msg']}" for e in errors[:5])
        return error_response(400, message, param=param)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        return error_response(500, f"the model failed: {type(exc).__name__}: {exc}", type="server_error")

    def options_for(body: _Sampling, prompt_tokens: int) -> GenerationOptions:
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
            seed=body.seed, stop=_stops(body.stop))

    async def run(prompts: list[str], options: GenerationOptions) -> list[Generation]:
        loop = asyncio.get_running_loop()
        job = Job(prompts, options, stream=False, loop=loop, future=loop.create_future())
        worker.submit(job)
        try:
            return await job.future
        finally:
            job.cancelled.set()  # a client that went away no longer needs a place in the next batch

    def stream_job(prompts: list[str], options: GenerationOptions) -> Job:
        loop = asyncio.get_running_loop()
        job = Job(prompts, options, stream=True, loop=loop, events=asyncio.Queue())
        worker.submit(job)
        return job

    async def sse(job: Job, chunk, include_usage: bool) -> AsyncIterator[str]:
        """Server-sent events: a chunk per text piece, a final chunk per choice, usage on request, [DONE]."""
        ends: list[Generation] = []
        try:
            for index in range(len(job.prompts)):
                yield _event(chunk(index, None, first=True))
            while True:
                kind, index, value = await job.events.get()
                if kind == "delta":
                    yield _event(chunk(index, value))
                elif kind == "end":
                    ends.append(value)
                    yield _event(chunk(index, None, finish_reason=value.finish_reason))
                elif kind == "error":
                    yield _event({"error": {"message": f"the model failed: {value}", "type": "server_error",
                                            "param": None, "code": None}})
                else:
                    break
            if include_usage and ends:
                yield _event({**chunk(0, None), "choices": [], "usage": _usage(ends)})
            yield "data: [DONE]\n\n"
        finally:
            job.cancelled.set()

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": generator.name}

    def model_card() -> dict:
        return {"id": generator.name, "object": "model", "created": created, "owned_by": "tunesmith"}

    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str):
        if model_id != generator.name:
            raise APIError(404, f"model {model_id!r} is not served here; this server has {generator.name!r}",
                           param="model", code="model_not_found")
        return model_card()

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest):
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                    for m in body.messages]
        if messages[-1]["role"] != "user":
            raise APIError(400, "the last message must come from the user", param="messages")
        try:
            prompt = generator.render(messages)
        except (TunesmithError, ValueError) as e:
            raise APIError(400, str(e), param="messages") from None
        prompt_tokens = generator.count_tokens(prompt)
        options = options_for(body, prompt_tokens)
        reply_id, now = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if body.stream:
            def chunk(index, text, first=False, finish_reason=None):
                delta = {"role": "assistant", "content": ""} if first else ({"content": text} if text else {})
                return {"id": reply_id, "object": "chat.completion.chunk", "created": now, "model": generator.name,
                        "choices": [{"index": index, "delta": delta, "logprobs": None,
                                     "finish_reason": finish_reason}]}
            job = stream_job([prompt] * body.n, options)
            return _streaming(sse(job, chunk, bool(body.stream_options and body.stream_options.include_usage)))
        generations = await run([prompt] * body.n, options)
        return {"id": reply_id, "object": "chat.completion", "created": now, "model": generator.name,
                "choices": [{"index": i, "message": {"role": "assistant", "content": g.text}, "logprobs": None,
                             "finish_reason": g.finish_reason} for i, g in enumerate(generations)],
                "usage": _usage(generations)}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest):
        # A completion continues the raw text: no template, exactly what the client sent.
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if not prompts or len(prompts) * body.n > limits.max_n * limits.batch_size:
            raise APIError(400, f"send between 1 and {limits.max_n * limits.batch_size} prompts x n", param="prompt")
        counts = [generator.count_tokens(p) for p in prompts]
        if 0 in counts:
            raise APIError(400, "a prompt is empty; send at least one character", param="prompt")
        options = options_for(body, max(counts))
        reply_id, now = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        expanded = [p for p in prompts for _ in range(body.n)]
        if body.stream:
            def chunk(index, text, first=False, finish_reason=None):
                return {"id": reply_id, "object": "text_completion", "created": now, "model": generator.name,
                        "choices": [{"index": index, "text": text or "", "logprobs": None,
                                     "finish_reason": finish_reason}]}
            job = stream_job(expanded, options)
            return _streaming(sse(job, chunk, bool(body.stream_options and body.stream_options.include_usage)))
        generations = await run(expanded, options)
        usage = {"prompt_tokens": sum(counts), "completion_tokens": sum(g.num_tokens for g in generations)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        return {"id": reply_id, "object": "text_completion", "created": now, "model": generator.name,
                "choices": [{"index": i, "text": g.text, "logprobs": None, "finish_reason": g.finish_reason}
                            for i, g in enumerate(generations)],
                "usage": usage}

    return app


def _event(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def _streaming(events: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(events, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def run_server(generator: Generator, host: str, port: int, api_key: str | None = None,
               limits: ServeConfig | None = None) -> None:
    """Serve until interrupted (uvicorn, one process: the model is loaded once)."""
    import uvicorn

    import ipaddress
    import sys

    app = create_app(generator, api_key=api_key, limits=limits)
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback and api_key is None:
        print(f"warning: listening on {host} without --api-key: anyone who can reach this port can use the model",
              file=sys.stderr, flush=True)
    print(f"serving {generator.name} at http://{host}:{port}/v1 (OpenAI-compatible; Ctrl-C stops)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
