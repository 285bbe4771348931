"""Teacher clients: an OpenAI-compatible endpoint called from a thread pool, or a model run in-process.

Generators see only the `Teacher` protocol: prompts in, one `TeacherReply` or `TeacherFailure` out per prompt.
A failed request never stops a run: it is retried with backoff and handed back as a failure to be counted.
Only answers that no retry can fix (a wrong key, URL or model) raise, since every later request would fail too.
A server that refuses `max_tokens` and states its maximum (as `tunesmith serve` and OpenAI do) is asked again
once at that maximum, and the rest of the run asks for no more.
"""

from __future__ import annotations

import json
import random
import re
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Iterator, Protocol, Sequence
from urllib.parse import urlsplit, urlunsplit

from tunesmith.config import TeacherConfig
from tunesmith.errors import ConfigError


@dataclass(frozen=True)
class TeacherReply:
    """What the teacher wrote for one prompt and what it cost."""

    text: str
    finish_reason: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    attempts: int = 1


@dataclass(frozen=True)
class TeacherFailure:
    """A request that got no usable answer after every retry."""

    reason: str
    attempts: int


class Teacher(Protocol):
    name: str
    concurrency: int
    notes: list[str]
    """What the teacher changed during the run (a lowered `max_tokens`), for the summary."""

    def complete_many(self, prompts: Sequence[str]) -> Iterator[tuple[int, TeacherReply | TeacherFailure]]:
        """Answer every prompt; yields (index, result) as each finishes, in any order."""

    def close(self) -> None: ...


RETRY_STATUS = {408, 409, 429}
"""HTTP statuses worth retrying besides 5xx: timeouts, conflicts and rate limits."""

FATAL_STATUS = {401, 403, 404}
"""Statuses every later request would get too: a wrong key, URL or model name. They stop the run."""

MAX_BACKOFF_S = 60.0


def chat_completions_url(url: str) -> str:
    """The chat completions endpoint of an OpenAI-compatible base URL.

    >>> chat_completions_url("http://127.0.0.1:8000"), chat_completions_url("https://api.openai.com/v1/")
    ('http://127.0.0.1:8000/v1/chat/completions', 'https://api.openai.com/v1/chat/completions')
    """
    url = url.strip().rstrip("/")
    if url.endswith("/chat/completions"):
        return url
    if urlsplit(url).path in ("", "/"):
        url += "/v1"
    return url + "/chat/completions"


def _public_url(url: str) -> str:
    """The URL without any user:password part, fit for provenance and messages."""
    parts = urlsplit(url)
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return urlunsplit(parts._replace(netloc=host + (f":{parts.port}" if parts.port else "")))


def backoff_delay(retry: int, base_s: float, retry_after: str | None = None) -> float:
    """Seconds to wait before retry number `retry` (1-based): doubling from `base_s`, with jitter.

    The jitter (50-100% of the step) spreads out clients that failed together; a server's Retry-After
    is honoured when it asks for longer. Never more than a minute.
    """
    delay = min(MAX_BACKOFF_S, base_s * 2 ** (retry - 1)) * random.uniform(0.5, 1.0)
    try:
        asked = float(retry_after) if retry_after else 0.0
    except ValueError:  # an HTTP date; the computed backoff is good enough
        asked = 0.0
    return max(delay, min(MAX_BACKOFF_S, asked))


def give_up_after(teacher: Teacher) -> int:
    """Failed requests in a row that mean the teacher is down, not unlucky: stop instead of burning time."""
    return max(4, 2 * teacher.concurrency)


_STATED_MAX = re.compile(r"(?:allows|at most|maximum(?: value)?(?: is| of)?|up to|<=)\s*\(?(\d+)", re.IGNORECASE)


def stated_max_tokens(error_text: str, asked: int) -> int | None:
    """The `max_tokens` a refusal says the server allows, when it refuses `asked` as too many; else None.

    Only a server-wide limit counts: a prompt too long for the context (`context_length_exceeded`) is that
    prompt's problem, and lowering every later request would not fix it.

    >>> stated_max_tokens('{"error": {"message": "max_tokens=1536 is more than this server allows (1024)", '
    ...                   '"param": "max_tokens"}}', 1536)
    1024
    >>> stated_max_tokens('{"error": {"message": "max_tokens is too large: 5000. This model supports at most '
    ...                   '4096 completion tokens"}}', 5000)
    4096
    """
    try:
        error = json.loads(error_text).get("error")
    except (ValueError, AttributeError):
        return None
    error = error if isinstance(error, dict) else {"message": error}
    message = str(error.get("message") or "")
    about_max_tokens = error.get("param") in ("max_tokens", "max_completion_tokens") or "max_tokens" in message
    if not about_max_tokens or error.get("code") == "context_length_exceeded":
        return None
    match = _STATED_MAX.search(message)
    stated = int(match.group(1)) if match else 0
    return stated if 0 < stated < asked else None


def parse_chat_completion(body: dict) -> TeacherReply:
    """The answer text, finish reason and token usage of an OpenAI chat completion response.

    Raises:
        ValueError: the body is not a chat completion with a text message.
    """
    try:
        choice = body["choices"][0]
        text = choice["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise ValueError("not an OpenAI chat completion (no choices[0].message.content)") from None
    if not isinstance(text, str):
        raise ValueError("choices[0].message.content is not text")
    usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
    return TeacherReply(text=text, finish_reason=str(choice.get("finish_reason") or "stop"),
                        prompt_tokens=int(usage.get("prompt_tokens") or 0),
                        completion_tokens=int(usage.get("completion_tokens") or 0))


class HttpTeacher:
    """A teacher behind an OpenAI-compatible `/chat/completions` endpoint, called from a bounded thread pool."""

    def __init__(self, config: TeacherConfig, api_key: str | None = None):
        import httpx

        self.config = config
        self.concurrency = config.concurrency
        self.endpoint = chat_completions_url(config.url)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(headers=headers, timeout=config.timeout_s,
                                    limits=httpx.Limits(max_connections=config.concurrency))
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.max_tokens = config.max_tokens
        self.notes: list[str] = []
        self.model = config.model or self._first_model()
        self.name = f"{self.model} @ {_public_url(self.endpoint)}"

    def _first_model(self) -> str:
        """The first model the endpoint's /models lists, for servers that host one model (like `tunesmith serve`).

        Raises:
            ConfigError: the endpoint cannot be reached or lists no model.
        """
        import httpx

        url = self.endpoint.removesuffix("/chat/completions") + "/models"
        try:
            response = self._client.get(url)
            response.raise_for_status()
            return str(response.json()["data"][0]["id"])
        except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as e:
            raise ConfigError(f"teacher.model is empty and {_public_url(url)} did not list a model ({e}); "
                              f"name one with --teacher-model") from None

    def complete(self, prompt: str) -> TeacherReply | TeacherFailure:
        """One chat request with retries on 429/5xx/timeouts/connection errors.

        A 400 stating the server's `max_tokens` is sent again at once at that maximum (not one of the retries).

        Raises:
            ConfigError: the endpoint answers 401/403/404 (wrong key, URL or model), which no retry fixes.
        """
        body = {"model": self.model, "messages": [{"role": "user", "content": prompt}],
                "max_tokens": self.max_tokens, "temperature": self.config.temperature}
        reason, retry_after, lowered, sent = "", None, False, 0
        attempts, attempt = self.config.max_retries + 1, 0
        while attempt < attempts:
            attempt += 1
            if attempt > 1 and self._stop.wait(backoff_delay(attempt - 1, self.config.backoff_s, retry_after)):
                return TeacherFailure("stopped", sent)
            retry_after = None
            response, reason = self._post(body)
            sent += 1
            if response is None:
                continue
            status = response.status_code
            if status in FATAL_STATUS:
                raise ConfigError(f"teacher {_public_url(self.endpoint)} answered HTTP {status} "
                                  f"({response.text[:200].strip()}); check --teacher-url, --teacher-model and the "
                                  f"key in ${self.config.key_env}")
            if status in RETRY_STATUS or status >= 500:
                reason, retry_after = f"HTTP {status}", response.headers.get("retry-after")
                continue
            if status >= 400:  # the request itself is wrong (too long...); sending it again changes nothing
                stated = None if lowered else stated_max_tokens(response.text, body["max_tokens"])
                if stated is None:
                    return TeacherFailure(f"HTTP {status}: {response.text[:200].strip()}", sent)
                body, lowered = {**body, "max_tokens": self._adopt_max_tokens(stated)}, True
                attempt -= 1  # ...unless it only asked for more tokens than the server allows
                continue
            try:
                reply = parse_chat_completion(response.json())
            except ValueError as e:
                reason = f"bad answer body: {e}"
                continue
            return TeacherReply(reply.text, reply.finish_reason, reply.prompt_tokens, reply.completion_tokens, sent)
        return TeacherFailure(reason, sent)

    def _post(self, body: dict):
        """One POST of `body`: the response, or None and why no answer came (timeout, connection error)."""
        import httpx

        try:
            return self._client.post(self.endpoint, json=body), ""
        except httpx.TimeoutException:
            return None, f"timed out after {self.config.timeout_s:g} s"
        except httpx.TransportError as e:
            return None, f"connection error: {e}"

    def _adopt_max_tokens(self, stated: int) -> int:
        """Ask for at most `stated` tokens from now on, as the server said; noted once for the summary."""
        with self._lock:
            if stated < self.max_tokens:
                self.notes.append(f"max_tokens lowered from {self.max_tokens} to {stated}, the most the teacher "
                                  f"allows (set --max-tokens to skip the refused first try)")
                self.max_tokens = stated
        return stated

    def complete_many(self, prompts: Sequence[str]) -> Iterator[tuple[int, TeacherReply | TeacherFailure]]:
        pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="teacher")
        finished = False
        try:
            futures = {pool.submit(self.complete, p): i for i, p in enumerate(prompts)}
            for future in as_completed(futures):
                yield futures[future], future.result()
            finished = True
        finally:
            if not finished:
                # Ctrl-C or a fatal answer: requests not yet sent are dropped and none is retried, so the
                # process ends once the requests in flight return (at most timeout_s).
                self._stop.set()
            pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        self._client.close()


class LocalTeacher:
    """A model run in-process through `tunesmith.use.generation`, `concurrency` prompts per batch."""

    def __init__(self, config: TeacherConfig):
        from tunesmith.use.generation import GenerationOptions, load_for_inference

        self.generator = load_for_inference(config.local)
        self.concurrency = config.concurrency
        self.name = f"local:{self.generator.name}"
        self.notes: list[str] = []
        self.options = GenerationOptions(max_new_tokens=config.max_tokens, do_sample=config.temperature > 0,
                                         temperature=config.temperature or 1.0)

    def complete_many(self, prompts: Sequence[str]) -> Iterator[tuple[int, TeacherReply | TeacherFailure]]:
        from tunesmith.use.generation import generate_batch

        rendered = [self.generator.render(p) for p in prompts]
        for start in range(0, len(rendered), self.concurrency):
            batch = generate_batch(self.generator.model, self.generator.tokenizer,
                                   rendered[start:start + self.concurrency], self.options)
            for offset, generation in enumerate(batch):
                yield start + offset, TeacherReply(generation.text, generation.finish_reason,
                                                   generation.num_prompt_tokens, generation.num_tokens)

    def close(self) -> None:
        pass


def build_teacher(config: TeacherConfig, api_key: str | None = None) -> HttpTeacher | LocalTeacher:
    """The teacher a config names: an endpoint (`url`) or a local model (`local`)."""
    return LocalTeacher(config) if config.local else HttpTeacher(config, api_key)
