"""Teacher-LLM data generation: Alpaca-style self-instruct, and question/answer pairs from documents.

Most users have documents or a handful of example tasks, not a thousand instruction pairs. A bigger model
(the teacher: any OpenAI-compatible endpoint, or a local model run in-process) writes them, and this module
keeps only what is usable: parsed strictly, filtered for length, for tasks a text model cannot do, and for
near-duplicates by ROUGE-L (the self-instruct filter).

Generation costs money and hours, so output is resumable: every record is appended as one whole line and
fsynced; re-running the same command reads what is there (a torn last line from a crash is cut away), skips
work already done and appends only what is missing. A failed request never stops a run: it is retried with
backoff, then counted in the summary written next to the output (`<out>.summary.json`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import re
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from html.parser import HTMLParser
from pathlib import Path
from typing import Iterator, Protocol, Sequence
from urllib.parse import urlsplit, urlunsplit

from tunesmith.config import DataConfig, FromDocsConfig, SelfInstructConfig, TeacherConfig
from tunesmith.errors import ConfigError, DataError
from tunesmith.runs import append_jsonl, atomic_write_json

# ---------------------------------------------------------------------------------------------------------
# Teachers


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

        Raises:
            ConfigError: the endpoint answers 401/403/404 (wrong key, URL or model), which no retry fixes.
        """
        import httpx

        body = {"model": self.model, "messages": [{"role": "user", "content": prompt}],
                "max_tokens": self.config.max_tokens, "temperature": self.config.temperature}
        reason, retry_after = "", None
        attempts = self.config.max_retries + 1
        for attempt in range(1, attempts + 1):
            if attempt > 1 and self._stop.wait(backoff_delay(attempt - 1, self.config.backoff_s, retry_after)):
                return TeacherFailure("stopped", attempt - 1)
            retry_after = None
            try:
                response = self._client.post(self.endpoint, json=body)
            except httpx.TimeoutException:
                reason = f"timed out after {self.config.timeout_s:g} s"
                continue
            except httpx.TransportError as e:
                reason = f"connection error: {e}"
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
                return TeacherFailure(f"HTTP {status}: {response.text[:200].strip()}", attempt)
            try:
                reply = parse_chat_completion(response.json())
            except ValueError as e:
                reason = f"bad answer body: {e}"
                continue
            return TeacherReply(reply.text, reply.finish_reason, reply.prompt_tokens, reply.completion_tokens,
                                attempt)
        return TeacherFailure(reason, attempts)

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


# ---------------------------------------------------------------------------------------------------------
# Parsing what the teacher wrote


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


# ---------------------------------------------------------------------------------------------------------
# Filters


class _WordTokenizer:
    """Lower-cased word tokens in any script (rouge_score's default keeps only a-z0-9, blind to most languages)."""

    def tokenize(self, text: str) -> list[str]:
        return re.findall(r"\w+", text.lower())


class RougeFilter:
    """Near-duplicate check: ROUGE-L F1 of a new text against every kept one, as self-instruct filters.

    >>> f = RougeFilter(0.7); f.add("Give three tips for staying healthy.")
    >>> f.is_near_duplicate("Give three tips for staying very healthy."), f.is_near_duplicate("Sort 3, 1, 2.")
    (True, False)
    """

    def __init__(self, threshold: float):
        from rouge_score import rouge_scorer

        self.threshold = threshold
        self._tokenizer = _WordTokenizer()
        self._scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=self._tokenizer)
        self._kept: list[tuple[str, Counter, int]] = []

    def add(self, text: str) -> None:
        tokens = self._tokenizer.tokenize(text)
        self._kept.append((text, Counter(tokens), len(tokens)))

    def most_similar(self, text: str) -> tuple[float, str | None]:
        """The highest ROUGE-L F1 against a kept text, and that text."""
        counts = Counter(self._tokenizer.tokenize(text))
        size = sum(counts.values())
        best, best_text = 0.0, None
        for kept, kept_counts, kept_size in self._kept:
            # The LCS is at most the shared-word count, so most pairs are ruled out without computing it;
            # this keeps thousands of comparisons per new instruction fast.
            if size + kept_size == 0 or 2 * sum((counts & kept_counts).values()) / (size + kept_size) <= best:
                continue
            score = self._scorer.score(kept, text)["rougeL"].fmeasure
            if score > best:
                best, best_text = score, kept
        return best, best_text

    def is_near_duplicate(self, text: str) -> bool:
        return self.most_similar(text)[0] >= self.threshold


UNSUPPORTED_WORDS = re.compile(
    r"\b(images?|pictures?|photos?|photographs?|graphs?|charts?|diagrams?|flowcharts?|draw|drawing|plot|"
    r"maps?|files?|videos?|audio|music|songs?|listen|go to|browse|website)\b", re.IGNORECASE)
"""Instructions about things a text-only model cannot see, make or do (Alpaca's blacklist idea)."""


def normalized(text: str) -> str:
    """The form exact-duplicate checks compare: lower case, single spaces.

    >>> normalized("  Name  THREE colours. ")
    'name three colours.'
    """
    return " ".join(text.lower().split())


def instruction_problem(task: Task, options: SelfInstructConfig) -> str | None:
    """Why a generated task is not kept by the cheap filters (`too_short`, `too_long`, `unsupported`), or None.

    >>> instruction_problem(Task("Draw a map of Europe.", "", "..."), SelfInstructConfig())
    'unsupported'
    """
    words = len(task.instruction.split())
    if words < options.min_instruction_words:
        return "too_short"
    if words > options.max_instruction_words:
        return "too_long"
    if UNSUPPORTED_WORDS.search(task.instruction):
        return "unsupported"
    return None


# ---------------------------------------------------------------------------------------------------------
# Documents


DOC_SUFFIXES = (".md", ".markdown", ".txt", ".html", ".htm", ".pdf")
CHARS_PER_TOKEN = 4
"""Rough characters per token of English text, to keep chunks within a budget without the teacher's tokenizer."""


class _HtmlText(HTMLParser):
    """Visible text of an HTML page with headings as markdown `#` lines and blocks as paragraphs."""

    BLOCKS = {"p", "div", "li", "tr", "section", "article", "blockquote", "pre", "ul", "ol", "table", "dd", "dt",
              "header", "footer", "main", "aside", "nav", "figure"}
    HIDDEN = {"script", "style", "head", "template", "noscript"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.hidden = 0

    def handle_starttag(self, tag, attrs):
        if tag in self.HIDDEN:
            self.hidden += 1
        elif re.fullmatch(r"h[1-6]", tag):
            self.parts.append("\n\n" + "#" * int(tag[1]) + " ")
        elif tag in self.BLOCKS:
            self.parts.append("\n\n")
        elif tag == "br":
            self.parts.append("\n")

    def handle_endtag(self, tag):
        if tag in self.HIDDEN:
            self.hidden = max(0, self.hidden - 1)
        elif tag in self.BLOCKS or re.fullmatch(r"h[1-6]", tag):
            self.parts.append("\n\n")

    def handle_data(self, data):
        if not self.hidden:
            self.parts.append(re.sub(r"[ \t\r\n]+", " ", data))


def html_to_text(html: str) -> str:
    """Readable text of an HTML document (scripts and styles dropped, headings kept as `#` lines).

    >>> html_to_text("<h2>Care</h2><p>Wash <b>cold</b>.</p><script>x()</script>")
    '## Care\\n\\nWash cold.'
    """
    parser = _HtmlText()
    parser.feed(html)
    parser.close()
    paragraphs = (re.sub(r" *\n *", "\n", p).strip() for p in re.split(r"\n\s*\n", "".join(parser.parts)))
    return "\n\n".join(p for p in paragraphs if p)


def read_document(path: Path) -> str:
    """The text of one .md/.txt/.html/.pdf document.

    Raises:
        DataError: the file cannot be read or decoded, or has an unsupported type.
    """
    suffix = path.suffix.lower()
    try:
        if suffix == ".pdf":
            from pypdf import PdfReader
            from pypdf.errors import PyPdfError

            try:
                return "\n\n".join((page.extract_text() or "").strip() for page in PdfReader(path).pages)
            except (PyPdfError, ValueError, KeyError, TypeError) as e:
                raise DataError(f"cannot read the PDF's text: {e}", file=str(path)) from None
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"not UTF-8 text ({e.reason} at byte {e.start})", file=str(path)) from None
    except OSError as e:
        raise DataError(f"cannot read: {e.strerror}", file=str(path)) from None
    if suffix in (".html", ".htm"):
        return html_to_text(text)
    if suffix in (".md", ".markdown", ".txt"):
        return text.replace("\r\n", "\n")
    raise DataError(f"unsupported document type {suffix!r}; use {', '.join(DOC_SUFFIXES)}", file=str(path))


_HEADING = re.compile(r"^#{1,6}\s+\S")


def _blocks(text: str) -> list[tuple[str, bool]]:
    """Paragraphs and heading lines of a text, each flagged whether it is a heading."""
    blocks, paragraph = [], []
    for line in text.splitlines() + [""]:
        if _HEADING.match(line) or not line.strip():
            if paragraph:
                blocks.append(("\n".join(paragraph).strip(), False))
                paragraph = []
            if line.strip():
                blocks.append((line.strip(), True))
        else:
            paragraph.append(line)
    return blocks


def _pieces(paragraph: str, max_chars: int) -> list[str]:
    """A paragraph cut into pieces that fit: at sentence ends, and inside a sentence only when it must be."""
    if len(paragraph) <= max_chars:
        return [paragraph]
    pieces, current = [], ""
    for sentence in re.split(r"(?<=[.!?])\s+", paragraph):
        for start in range(0, len(sentence), max_chars):
            part = sentence[start:start + max_chars]
            if current and len(current) + 1 + len(part) > max_chars:
                pieces.append(current)
                current = ""
            current = f"{current} {part}" if current else part
    return pieces + [current] if current else pieces


def split_chunks(text: str, max_tokens: int) -> list[str]:
    """Split a document into chunks of at most `max_tokens` (estimated), breaking at headings, then paragraphs.

    Each heading starts a new chunk, so a chunk stays on one topic; a section too long for one chunk is split
    at paragraphs (sentences if need be), and its heading is repeated at the top of each part.

    >>> split_chunks("# Setup\\n\\nPlug it in.\\n\\n# Care\\n\\nWipe it.", 512)
    ['# Setup\\n\\nPlug it in.', '# Care\\n\\nWipe it.']
    """
    max_chars = max_tokens * CHARS_PER_TOKEN
    chunks: list[str] = []
    current: list[str] = []
    has_body = False
    heading = ""
    for block, is_heading in _blocks(text):
        if is_heading:
            if has_body:
                chunks.append("\n\n".join(current))
                current, has_body = [], False
            current.append(block)
            heading = block
            continue
        for piece in _pieces(block, max(max_chars // 2, max_chars - len(heading) - 2)):
            if has_body and sum(len(c) + 2 for c in current) + len(piece) > max_chars:
                chunks.append("\n\n".join(current))
                current = [heading] if heading else []
            current.append(piece)
            has_body = True
    if has_body:
        chunks.append("\n\n".join(current))
    return chunks


@dataclass(frozen=True)
class Chunk:
    """A piece of one document; `id` (`guide.md#3`) is stable while the document does not change."""

    id: str
    source: str
    text: str


def find_documents(docs: str | Path) -> list[Path]:
    """Every document under a folder (or the one file given), sorted so chunk ids are stable.

    Raises:
        DataError: the path does not exist or holds no document.
    """
    docs = Path(docs)
    if docs.is_file():
        return [docs]
    if not docs.is_dir():
        raise DataError("documents folder not found", file=str(docs))
    found = sorted(p for p in docs.rglob("*") if p.is_file() and p.suffix.lower() in DOC_SUFFIXES
                   and not any(part.startswith(".") for part in p.relative_to(docs).parts))
    if not found:
        raise DataError(f"no documents ({', '.join(DOC_SUFFIXES)}) found", file=str(docs))
    return found


def collect_chunks(docs: str | Path, max_tokens: int) -> list[Chunk]:
    """The chunks of every document under `docs`, in a stable order."""
    root = Path(docs)
    chunks = []
    for path in find_documents(root):
        source = path.name if root.is_file() else path.relative_to(root).as_posix()
        for index, text in enumerate(split_chunks(read_document(path), max_tokens), start=1):
            chunks.append(Chunk(f"{source}#{index}", source, text))
    return chunks


# ---------------------------------------------------------------------------------------------------------
# Resumable output


def recover_jsonl(path: str | Path) -> list[dict]:
    """The records of an output file being resumed, after cutting away a torn last line left by a crash.

    Lines are appended whole, so only the end of the file can be damaged: a last line without its newline,
    or one that is not valid JSON, is truncated away so the next append starts clean.

    Raises:
        DataError: a line before the last is not a JSON object (not a file this generator wrote).
    """
    path = Path(path)
    if not path.is_file():
        return []
    data = path.read_bytes()
    lines = data.split(b"\n")
    complete = lines[:-1]  # the part after the last newline is empty or torn
    records: list[dict] = []
    for number, line in enumerate(complete, start=1):
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            record = None
        if not isinstance(record, dict):
            if number == len(complete):
                complete = complete[:-1]
                break
            raise DataError("not a JSON object; this file was not written by the generator, choose another --out",
                            file=str(path), line=number)
        records.append(record)
    truncate_lines(path, len(records), data)
    return records


def truncate_lines(path: Path, keep: int, data: bytes | None = None) -> None:
    """Cut a JSONL file after its first `keep` lines (no-op when that is the whole file)."""
    data = path.read_bytes() if data is None else data
    end = 0
    for _ in range(keep):
        end = data.index(b"\n", end) + 1
    if end != len(data):
        with open(path, "r+b") as f:
            f.truncate(end)
            f.flush()
            os.fsync(f.fileno())


# ---------------------------------------------------------------------------------------------------------
# Summary


@dataclass
class DatagenSummary:
    """What one generation run asked for, got, kept and dropped (and why), and what it cost."""

    kind: str
    out: str
    teacher: str
    requested: int
    existing: int = 0
    produced: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    requests: int = 0
    failed_requests: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    stopped: str = "done"
    last_failure: str | None = None
    details: dict = field(default_factory=dict)

    def count(self, result: TeacherReply | TeacherFailure) -> None:
        self.requests += 1
        self.retries += result.attempts - 1
        if isinstance(result, TeacherFailure):
            self.failed_requests += 1
            self.last_failure = result.reason
        else:
            self.prompt_tokens += result.prompt_tokens
            self.completion_tokens += result.completion_tokens

    @property
    def total(self) -> int:
        return self.existing + self.kept

    def as_dict(self) -> dict:
        data = asdict(self)
        data["dropped"] = dict(sorted(self.dropped.items()))
        data["total"] = self.total
        data["total_tokens"] = self.prompt_tokens + self.completion_tokens
        data["finished_at"] = _now()
        return data

    def text(self) -> str:
        """The summary as a few lines for the terminal."""
        dropped = ", ".join(f"{k} {v}" for k, v in sorted(self.dropped.items()) if v) or "none"
        lines = [f"{self.kind}: {self.out} holds {self.total} records ({self.existing} before this run, "
                 f"{self.kept} new)",
                 f"  requested {self.requested}, produced {self.produced}, kept {self.kept}; dropped: {dropped}",
                 f"  requests {self.requests} ({self.failed_requests} failed, {self.retries} retries), "
                 f"tokens {self.prompt_tokens} prompt + {self.completion_tokens} completion",
                 f"  stopped: {self.stopped}"]
        if self.last_failure:
            lines.append(f"  last failure: {self.last_failure}")
        lines.append(f"  summary: {summary_path(self.out)}")
        return "\n".join(lines)


def summary_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".summary.json")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _save_summary(summary: DatagenSummary, out: Path) -> None:
    """Write `<out>.summary.json`; `kept` is recounted from the file, exact even after a Ctrl-C mid-write."""
    if out.is_file():
        summary.kept = out.read_bytes().count(b"\n") - summary.existing
    atomic_write_json(summary_path(out), summary.as_dict())


def _give_up_after(teacher: Teacher) -> int:
    """Failed requests in a row that mean the teacher is down, not unlucky: stop instead of burning time."""
    return max(4, 2 * teacher.concurrency)


def _progress(total: int, initial: int, unit: str, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=min(initial, total), unit=unit, desc=desc, disable=not enabled)


# ---------------------------------------------------------------------------------------------------------
# Self-instruct


def load_seed_tasks(path: str | Path) -> list[Task]:
    """Seed tasks from Stanford's seed-task JSONL (`instruction` + `instances: [{input, output}]`, the first
    instance is used) or from any file the data layer reads (alpaca, qa, prompt/completion, single-turn chat).

    Raises:
        DataError: the file is unreadable, empty, or holds records that are not instruction/answer pairs.
    """
    from tunesmith.data import as_pair, load_records
    from tunesmith.data.load import read_rows

    path = Path(path)
    rows = read_rows(path)
    if any(r.data is not None and "instances" in r.data for r in rows):
        problems = [r.problem for r in rows if r.problem is not None]
        if problems:
            raise DataError(problems)
        return [_stanford_task(r.data, r.file, r.line) for r in rows]
    tasks = []
    for record in load_records(path, DataConfig(path=str(path))).records:
        try:
            pair = as_pair(record)
        except ValueError as e:
            raise DataError(f"a seed task must be one instruction and its answer: {e}", file=record.file,
                            line=record.line) from None
        tasks.append(Task(pair.prompt, pair.input, pair.response, id=record.where))
    if not tasks:
        raise DataError("no seed tasks", file=str(path))
    return tasks


def _stanford_task(row: dict, file: str, line: int) -> Task:
    instruction, instances = row.get("instruction"), row.get("instances")
    if not isinstance(instruction, str) or not instruction.strip():
        raise DataError("expected a non-empty string", file=file, line=line, field="instruction")
    first = instances[0] if isinstance(instances, list) and instances else None
    if not isinstance(first, dict) or not isinstance(first.get("output"), str) or not first["output"].strip() \
            or not isinstance(first.get("input", ""), str):
        raise DataError("expected a list of {input, output} objects with a non-empty output string", file=file,
                        line=line, field="instances")
    return Task(instruction.strip(), first.get("input", "").strip(), first["output"].strip(),
                id=str(row.get("id") or f"{Path(file).name}:{line}"))


def format_task(number: int, task: Task) -> str:
    """One task in the numbered format the teacher is asked to continue.

    >>> print(format_task(2, Task("Add the numbers.", "", "5")))
    2. Instruction: Add the numbers.
    2. Input:
    <noinput>
    2. Output:
    5
    """
    return (f"{number}. Instruction: {' '.join(task.instruction.split())}\n{number}. Input:\n"
            f"{task.input or '<noinput>'}\n{number}. Output:\n{task.output}")


def self_instruct_prompt(examples: Sequence[Task], num_tasks: int) -> str:
    """The request for `num_tasks` new tasks, showing `examples` in the numbered format."""
    first = len(examples) + 1
    shown = "\n###\n".join(format_task(i, t) for i, t in enumerate(examples, start=1))
    return (
        f"We are collecting varied tasks to teach a text-only AI assistant to follow instructions. Write "
        f"{num_tasks} new tasks that differ from the examples below in topic, wording and kind.\n\n"
        "Guidelines:\n"
        "- Vary the verbs and the sentence form: mix direct questions with commands.\n"
        "- Vary the kind of task: open questions, explanations, classification, rewriting, summarizing, "
        "extraction, reasoning, brainstorming, short coding tasks.\n"
        "- Every task must be doable by a model that only reads and writes text: nothing that needs images, "
        "sound, files, browsing, or acting in the world.\n"
        "- An instruction is one or two sentences.\n"
        "- Give an input (a passage, a list, a snippet of code...) only when the task needs one; otherwise write "
        "<noinput>. Keep inputs short.\n"
        "- The output is a correct, complete answer of at most about 100 words.\n\n"
        "Use exactly the format of the examples (Instruction, Input, Output lines with the task's number) and "
        "put a line with ### between tasks.\n\n"
        f"###\n{shown}\n###\n\n"
        f"Now write tasks {first} to {first + num_tasks - 1}, starting with \"{first}. Instruction:\"."
    )


@contextlib.contextmanager
def recording_stop(summary: DatagenSummary, out: str | Path, bar):
    """Whatever ends a generator (done, Ctrl-C, an error), the summary says so and is saved next to `out`."""
    try:
        yield
    except KeyboardInterrupt:
        summary.stopped = "interrupted (everything written so far is kept; run again to resume)"
        raise
    except BaseException as e:
        summary.stopped = f"error: {e}"
        raise
    finally:
        bar.close()
        _save_summary(summary, out)


def self_instruct(seeds: str | Path, out: str | Path, teacher: Teacher, options: SelfInstructConfig,
                  progress: bool = True) -> DatagenSummary:
    """Grow `out` to `options.num_examples` alpaca records written by the teacher from a few seed tasks.

    Each request shows `seed_examples` random seeds (plus `generated_examples` earlier outputs) and asks for
    `tasks_per_request` new ones; every parsed task passes the length, unsupported-task, exact-duplicate and
    ROUGE-L filters against the seeds and everything kept, then is appended at once. Resumes an existing `out`.

    Output line: `{"instruction", "input", "output", "provenance": {"teacher", "seed_ids", "created"}}`.

    Raises:
        DataError: unreadable seeds, or an `out` that is not a file this generator wrote.
        ConfigError: the teacher rejects the URL, key or model (HTTP 401/403/404).
    """
    seed_tasks = load_seed_tasks(seeds)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    generated = [_generated_task(r, out, i) for i, r in enumerate(recover_jsonl(out), start=1)]
    target = options.num_examples
    summary = DatagenSummary("self-instruct", str(out), teacher.name, requested=target, existing=len(generated))
    seen = {normalized(t.instruction) for t in seed_tasks + generated}
    similar = RougeFilter(options.similarity_threshold)
    for task in seed_tasks + generated:
        similar.add(task.instruction)
    rng = random.Random(options.seed * 1_000_003 + len(generated))  # a resumed run does not replay old prompts
    max_requests = options.max_requests or 4 * math.ceil(target / options.tasks_per_request) + teacher.concurrency
    failures_in_row = 0
    bar = _progress(target, len(generated), "example", "self-instruct", progress)
    with recording_stop(summary, out, bar):
        while len(generated) < target:
            if summary.requests >= max_requests:
                summary.stopped = f"max_requests={max_requests} reached before {target} examples"
                break
            if failures_in_row >= _give_up_after(teacher):
                summary.stopped = f"gave up after {failures_in_row} failed requests in a row"
                break
            wanted = math.ceil((target - len(generated)) / options.tasks_per_request)
            wave = min(teacher.concurrency, wanted, max_requests - summary.requests)
            shown = [_sample_examples(rng, seed_tasks, generated, options) for _ in range(wave)]
            prompts = [self_instruct_prompt(examples, options.tasks_per_request) for examples in shown]
            for index, result in teacher.complete_many(prompts):
                summary.count(result)
                if isinstance(result, TeacherFailure):
                    failures_in_row += 1
                    continue
                failures_in_row = 0
                tasks, malformed = parse_numbered_tasks(result.text)
                summary.dropped["malformed"] += malformed
                if result.finish_reason == "length" and tasks and result.text.rstrip().endswith(tasks[-1].output):
                    tasks.pop()  # the answer was cut off by max_tokens inside this task's output
                    summary.dropped["truncated"] += 1
                summary.produced += len(tasks)
                seed_ids = [t.id for t in shown[index] if t.id]
                for task in tasks:
                    if len(generated) >= target:
                        summary.dropped["not_needed"] += 1
                        continue
                    reason = instruction_problem(task, options)
                    if normalized(task.instruction) in seen:
                        reason = "duplicate"
                    elif reason is None and similar.is_near_duplicate(task.instruction):
                        reason = "similar"
                    if reason:
                        summary.dropped[reason] += 1
                        continue
                    append_jsonl(out, {"instruction": task.instruction, "input": task.input, "output": task.output,
                                       "provenance": {"teacher": teacher.name, "seed_ids": seed_ids,
                                                      "created": _now()}})
                    generated.append(task)
                    seen.add(normalized(task.instruction))
                    similar.add(task.instruction)
                    summary.kept += 1
                    bar.update(1)
    return summary


def _generated_task(record: dict, out: Path, line: int) -> Task:
    instruction, output = record.get("instruction"), record.get("output")
    if not isinstance(instruction, str) or not isinstance(output, str):
        raise DataError("not an alpaca record written by self-instruct (instruction/output); choose another --out",
                        file=str(out), line=line)
    return Task(instruction, str(record.get("input") or ""), output)


def _sample_examples(rng: random.Random, seeds: list[Task], generated: list[Task],
                     options: SelfInstructConfig) -> list[Task]:
    """Which tasks one request shows: mostly human seeds (they anchor quality), plus a few generated ones."""
    examples = rng.sample(seeds, min(options.seed_examples, len(seeds)))
    return examples + rng.sample(generated, min(options.generated_examples, len(generated)))


# ---------------------------------------------------------------------------------------------------------
# Question/answer pairs from documents


def qa_prompt(chunk: Chunk, count: int) -> str:
    """The request for `count` question/answer pairs answerable from one chunk alone, as JSON."""
    return (
        f"Below is a passage from the document \"{chunk.source}\". Write {count} question-and-answer pairs about "
        "it for training a helpful assistant.\n\n"
        "Rules:\n"
        "- Each question must be answerable from this passage alone, and make sense to someone who has not "
        "seen it (name the subject; never say \"the passage\" or \"the text\").\n"
        "- Each answer must be correct according to the passage, complete, and one to three sentences.\n"
        "- Ask about different facts; do not repeat a question in other words.\n\n"
        f"Passage:\n\"\"\"\n{chunk.text}\n\"\"\"\n\n"
        'Reply with JSON only: a list of objects with string fields "question" and "answer".'
    )


def grade_prompt(chunk: Chunk, pairs: Sequence[tuple[str, str]]) -> str:
    """The request asking whether each pair is fully supported by its chunk."""
    listed = "\n".join(f"{i}. Question: {q}\n   Answer: {a}" for i, (q, a) in enumerate(pairs, start=1))
    return (
        "Check question-and-answer pairs against a passage. A pair is grounded when the passage alone states "
        "everything the answer says and the answer really answers the question.\n\n"
        f"Passage:\n\"\"\"\n{chunk.text}\n\"\"\"\n\nPairs:\n{listed}\n\n"
        'Reply with JSON only: a list with one object per pair, {"pair": <number>, "grounded": true or false}.'
    )


def _complete_chunks(path: Path, records: list[dict]) -> list[dict]:
    """Drop the last chunk's records when a crash cut its group short, so a rerun redoes it whole.

    A chunk's pairs are appended one after another, so only the final group can be incomplete; each record
    says how many pairs its chunk kept (`provenance.pairs_in_chunk`).
    """
    if not records:
        return records
    last = records[-1].get("chunk_id")
    group = 0
    while group < len(records) and records[-1 - group].get("chunk_id") == last:
        group += 1
    expected = (records[-1].get("provenance") or {}).get("pairs_in_chunk")
    if isinstance(expected, int) and group < expected:
        truncate_lines(path, len(records) - group)
        return records[:-group]
    return records


def qa_from_docs(docs: str | Path, out: str | Path, teacher: Teacher, options: FromDocsConfig,
                 progress: bool = True) -> DatagenSummary:
    """Question/answer pairs for every chunk of the documents under `docs`, appended to `out` (qa JSONL).

    Chunks already in `out` are skipped, so a rerun asks only for what is missing (chunks whose requests
    failed or gave no usable pair are asked again). Questions near-duplicating a kept one (ROUGE-L) are
    dropped; with `options.grade` a second request per chunk asks the teacher which pairs the chunk supports,
    and only those are kept.

    Output line: `{"question", "answer", "source", "chunk_id", "provenance": {"teacher", "created", "pair",
    "pairs_in_chunk"}}`.

    Raises:
        DataError: no readable documents, or an `out` that is not a file this generator wrote.
        ConfigError: the teacher rejects the URL, key or model (HTTP 401/403/404).
    """
    chunks = collect_chunks(docs, options.chunk_tokens)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    existing = _complete_chunks(out, recover_jsonl(out))
    questions = []
    for line, record in enumerate(existing, start=1):
        if not isinstance(record.get("question"), str) or not isinstance(record.get("chunk_id"), str):
            raise DataError("not a qa record written by from-docs (question/chunk_id); choose another --out",
                            file=str(out), line=line)
        questions.append(record["question"])
    done = {r["chunk_id"] for r in existing}
    todo = [c for c in chunks if c.id not in done]
    summary = DatagenSummary("from-docs", str(out), teacher.name, requested=len(todo) * options.per_chunk,
                             existing=len(existing),
                             details={"chunks": len(chunks), "chunks_done_before": len(chunks) - len(todo),
                                      "chunks_failed": 0})
    seen = {normalized(q) for q in questions}
    similar = RougeFilter(options.similarity_threshold)
    for question in questions:
        similar.add(question)
    failures_in_row = 0
    bar = _progress(len(chunks), len(chunks) - len(todo), "chunk", "from-docs", progress)
    with recording_stop(summary, out, bar):
        for start in range(0, len(todo), teacher.concurrency):
            if failures_in_row >= _give_up_after(teacher):
                summary.stopped = f"gave up after {failures_in_row} failed requests in a row"
                break
            wave = todo[start:start + teacher.concurrency]
            candidates: dict[int, list[tuple[str, str]]] = {}
            for index, result in teacher.complete_many([qa_prompt(c, options.per_chunk) for c in wave]):
                summary.count(result)
                failures_in_row = failures_in_row + 1 if isinstance(result, TeacherFailure) else 0
                if isinstance(result, TeacherReply):
                    pairs, malformed = parse_qa_pairs(result.text)
                    summary.dropped["malformed"] += malformed
                    summary.produced += len(pairs)
                    candidates[index] = pairs
            verdicts = _grade(wave, candidates, teacher, summary) if options.grade else {}
            for index, chunk in enumerate(wave):
                if index not in candidates or (options.grade and index not in verdicts):
                    summary.details["chunks_failed"] += 1
                    bar.update(1)
                    continue
                kept = []
                grades = verdicts.get(index) or [None] * len(candidates[index])
                for (question, answer), grounded in zip(candidates[index], grades):
                    reason = None
                    if options.grade and grounded is not True:
                        reason = "ungraded" if grounded is None else "not_grounded"
                    elif normalized(question) in seen:
                        reason = "duplicate"
                    elif similar.is_near_duplicate(question):
                        reason = "similar"
                    elif len(kept) == options.per_chunk:
                        reason = "extra"  # more good pairs than asked for: the first ones are kept
                    if reason:
                        summary.dropped[reason] += 1
                        continue
                    kept.append((question, answer))
                    seen.add(normalized(question))
                    similar.add(question)
                for number, (question, answer) in enumerate(kept, start=1):
                    append_jsonl(out, {"question": question, "answer": answer, "source": chunk.source,
                                       "chunk_id": chunk.id,
                                       "provenance": {"teacher": teacher.name, "created": _now(), "pair": number,
                                                      "pairs_in_chunk": len(kept)}})
                summary.kept += len(kept)
                bar.update(1)
    return summary


def _grade(wave: list[Chunk], candidates: dict[int, list[tuple[str, str]]], teacher: Teacher,
           summary: DatagenSummary) -> dict[int, list[bool | None]]:
    """The teacher's grounded verdicts per chunk index; chunks whose grading request failed are absent."""
    graded = [i for i in sorted(candidates) if candidates[i]]
    verdicts: dict[int, list[bool | None]] = {i: [] for i in candidates if not candidates[i]}
    prompts = [grade_prompt(wave[i], candidates[i]) for i in graded]
    for position, result in teacher.complete_many(prompts):
        summary.count(result)
        if isinstance(result, TeacherReply):
            index = graded[position]
            verdicts[index] = parse_grades(result.text, len(candidates[index]))
    return verdicts
