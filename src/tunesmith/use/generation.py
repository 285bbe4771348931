"""Text generation from a model, shared by evaluation, chat and serve.

One place decides how a prompt becomes text: the run's own template renders it (`tunesmith.prepare.templates`), the
batch is left-padded so every row ends where its answer starts, transformers' `generate` decodes with the KV
cache, and the answer stops at the end token (eos or the chat template's end-of-turn token) or a stop string.
Greedy unless asked to sample, so evaluation is repeatable.

torch and transformers are imported inside functions: `GenerationOptions` is cheap to import anywhere.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Literal, Sequence

from pydantic import ValidationError

from tunesmith.config import ModelConfig, TemplateConfig
from tunesmith.data.records import Message, Record
from tunesmith.errors import DataError, DataProblem, GenerationError, ModelError, RunError
from tunesmith.runs import RUN_INFO_FILE, is_run_folder

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class GenerationOptions:
    """How to decode; the defaults are greedy so the same prompt always gives the same answer."""

    max_new_tokens: int = 128
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def __post_init__(self):
        problems = [f"max_new_tokens={self.max_new_tokens}: must be at least 1"] if self.max_new_tokens < 1 else []
        if not self.temperature > 0:
            problems.append(f"temperature={self.temperature}: must be above 0 (use do_sample=False for greedy)")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p={self.top_p}: must be in (0, 1]")
        if isinstance(self.stop, str):
            problems.append(f"stop={self.stop!r}: give a tuple of strings")
        if problems:
            raise GenerationError("; ".join(problems))


@dataclass(frozen=True)
class Generation:
    """One answer: its text (end token and stop string cut off) and what it cost in tokens."""

    text: str
    num_prompt_tokens: int
    num_tokens: int
    finish_reason: Literal["stop", "length"]


def end_token_ids(tokenizer) -> set[int]:
    """Token ids that end an answer: eos plus the end-of-turn token the chat template puts after an answer.

    Many models' eos is `<|endoftext|>` while their chat turns end with `<|im_end|>` (or `<|eot_id|>`...);
    stopping only at eos would run the model on into a made-up next turn.
    """
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    if getattr(tokenizer, "chat_template", None):
        marker = "\x00tunesmith-answer\x00"
        try:
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": "q"}, {"role": "assistant", "content": marker}], tokenize=False)
        except Exception:  # a template that rejects this minimal conversation simply adds no end token
            text = ""
        after = text.split(marker, 1)[1] if marker in text else ""
        tail = tokenizer(after, add_special_tokens=False)["input_ids"] if after.strip() else []
        special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
        if tail and tail[0] in special:
            ids.add(tail[0])
    return ids


def _generation_config(tokenizer, options: GenerationOptions, stop_ids: set[int]):
    """A complete GenerationConfig, so a model's shipped defaults (sampling, penalties) never leak in."""
    from transformers import GenerationConfig

    sampling = dict(temperature=options.temperature, top_p=options.top_p) if options.do_sample else {}
    return GenerationConfig(max_new_tokens=options.max_new_tokens, do_sample=options.do_sample,
                            eos_token_id=sorted(stop_ids), pad_token_id=_pad_id(tokenizer), use_cache=True, **sampling)


def _pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def _encode(tokenizer, prompts: Sequence[str], device):
    """Left-padded ids and mask of rendered prompts, tokenized exactly as training tokenized them: the template
    wrote its own special tokens, and the tokenizer's BOS goes in front once (see `tokenization`)."""
    from tunesmith.prepare.tokenization import special_prefix

    prefix = special_prefix(tokenizer)
    ids = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    ids = [row if row[:len(prefix)] == prefix else prefix + row for row in ids]
    if not all(ids):
        raise GenerationError("an empty prompt cannot be answered: the model needs at least one token to go on")
    encoded = tokenizer.pad({"input_ids": ids}, padding=True, padding_side="left", return_tensors="pt")
    return encoded["input_ids"].to(device), encoded["attention_mask"].to(device)


def _seed(options: GenerationOptions) -> None:
    import torch

    if options.do_sample and options.seed is not None:
        torch.manual_seed(options.seed)


def first_stop(text: str, stops: Sequence[str]) -> int | None:
    """Index where the earliest stop string starts, or None.

    >>> first_stop("a. b###c", ["###", "b"])
    3
    """
    found = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(found) if found else None


def _finish(tokenizer, new_ids: list[int], num_prompt_tokens: int, options: GenerationOptions,
            stop_ids: set[int]) -> Generation:
    """Turn the generated ids of one row into a Generation: cut at the end token, then at a stop string."""
    # A row that finished early is filled with padding; the pad id cuts it like an end token would.
    cut_ids = stop_ids | {_pad_id(tokenizer)}
    end = next((i for i, t in enumerate(new_ids) if t in cut_ids), None)
    kept = new_ids if end is None else new_ids[:end]
    num_tokens = len(new_ids) if end is None else end + 1
    text = tokenizer.decode(kept, skip_special_tokens=True)
    stop_at = first_stop(text, options.stop)
    if stop_at is not None:
        text = text[:stop_at]
    reason = "length" if end is None and stop_at is None and len(new_ids) >= options.max_new_tokens else "stop"
    return Generation(text, num_prompt_tokens, num_tokens, reason)


class _StopCriteria:
    """Ends a row when its answer (never the prompt) holds a stop string, or every row when cancelled.

    transformers' own `stop_strings` also matches a stop string that begins inside the prompt, which would end
    "...sunset." + ".." at a "..." stop; OpenAI's stop sequences only look at the answer.
    """

    def __init__(self, tokenizer, stops: Sequence[str], prompt_length: int, cancel: threading.Event | None = None):
        self.tokenizer, self.stops, self.prompt_length, self.cancel = tokenizer, list(stops), prompt_length, cancel

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        import torch

        if self.cancel is not None and self.cancel.is_set():
            return torch.ones(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        if not self.stops:
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        answers = self.tokenizer.batch_decode(input_ids[:, self.prompt_length:], skip_special_tokens=True)
        return torch.tensor([first_stop(a, self.stops) is not None for a in answers], device=input_ids.device)


def generate_batch(model, tokenizer, prompts: Sequence[str], options: GenerationOptions) -> list[Generation]:
    """Answer every prompt in one left-padded batch (one forward pass per new token, KV cache on).

    Rendered prompts go in (see `Generator.render`); answers come out in the same order.
    """
    import torch

    if not prompts:
        return []
    stop_ids = end_token_ids(tokenizer)
    input_ids, attention_mask = _encode(tokenizer, prompts, model.device)
    _seed(options)
    with torch.inference_mode():
        output = model.generate(input_ids=input_ids, attention_mask=attention_mask,
                                stopping_criteria=[_StopCriteria(tokenizer, options.stop, input_ids.shape[1])],
                                generation_config=_generation_config(tokenizer, options, stop_ids))
    new = output[:, input_ids.shape[1]:].tolist()
    prompt_lengths = attention_mask.sum(dim=1).tolist()
    return [_finish(tokenizer, row, int(n), options, stop_ids) for row, n in zip(new, prompt_lengths)]


class StopScanner:
    """Holds back streamed text that could still turn into a stop string, and cuts at the first one.

    >>> s = StopScanner(["###"]); [s.feed("ab#"), s.feed("#"), s.feed("#cd"), s.done]
    ['ab', '', '', True]
    """

    def __init__(self, stops: Sequence[str]):
        self.stops = [s for s in stops if s]
        self.text = ""
        self.sent = 0
        self.done = False

    def feed(self, piece: str) -> str:
        """New text in, the part that is safe to show out."""
        if self.done:
            return ""
        self.text += piece
        stop_at = first_stop(self.text, self.stops)
        if stop_at is not None:
            self.done = True
            return self._emit(stop_at)
        held = max((k for s in self.stops for k in range(1, len(s)) if self.text.endswith(s[:k])), default=0)
        return self._emit(len(self.text) - held)

    def flush(self) -> str:
        """The held-back tail once the answer is over (it never became a stop string)."""
        return "" if self.done else self._emit(len(self.text))

    def _emit(self, end: int) -> str:
        piece = self.text[self.sent:end] if end > self.sent else ""
        self.sent = max(self.sent, end)
        return piece


class GenerationStream:
    """Text pieces of one answer as the model produces them; `generation` holds the whole result afterwards.

    The model runs in a background thread feeding a TextIteratorStreamer; `close()` (or leaving a `with`
    block early) stops it at the next token, so an abandoned stream does not keep the model busy.
    """

    def __init__(self, model, tokenizer, prompt: str, options: GenerationOptions):
        from transformers import TextIteratorStreamer

        self.options = options
        self.generation: Generation | None = None
        self._tokenizer = tokenizer
        self._cancel = threading.Event()
        self._error: BaseException | None = None
        self._output = None
        self._finished = False
        self._stop_ids = end_token_ids(tokenizer)
        self._input_ids, attention_mask = _encode(tokenizer, [prompt], model.device)
        self._streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self._thread = threading.Thread(target=self._run, args=(model, attention_mask), daemon=True)
        self._thread.start()

    def _run(self, model, attention_mask) -> None:
        import torch

        try:
            _seed(self.options)
            with torch.inference_mode():
                self._output = model.generate(
                    input_ids=self._input_ids, attention_mask=attention_mask, streamer=self._streamer,
                    stopping_criteria=[_StopCriteria(self._tokenizer, self.options.stop,
                                                     self._input_ids.shape[1], self._cancel)],
                    generation_config=_generation_config(self._tokenizer, self.options, self._stop_ids))
        except BaseException as e:  # handed to the reading thread, which raises it
            self._error = e
            self._streamer.end()

    def __iter__(self) -> Iterator[str]:
        scanner = StopScanner(self.options.stop)
        for piece in self._streamer:
            shown = scanner.feed(piece)
            if shown:
                yield shown
            if scanner.done:
                self.close()
        self._finished = True
        tail = scanner.flush()
        if tail:
            yield tail
        self._thread.join()
        if self._error is not None:
            raise self._error
        new = self._output[0, self._input_ids.shape[1]:].tolist()
        self.generation = _finish(self._tokenizer, new, self._input_ids.shape[1], self.options, self._stop_ids)

    def close(self) -> None:
        self._cancel.set()

    def __enter__(self) -> GenerationStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
        if not self._finished:  # the reader left early: let the streamer reach its end marker
            for _ in self._streamer:
                pass
        self._thread.join()


def stream_generate(model, tokenizer, prompt: str, options: GenerationOptions) -> GenerationStream:
    """Start answering one rendered prompt; iterate the result for text pieces as they are produced."""
    return GenerationStream(model, tokenizer, prompt, options)


@dataclass
class Generator:
    """A model ready to answer: weights, tokenizer and the template it was trained with, kept together."""

    model: object
    tokenizer: object
    template: TemplateConfig
    name: str
    base_model: str
    method: str | None = None

    @property
    def context_length(self) -> int:
        from tunesmith.models import context_length

        return context_length(self.model.config)

    def render(self, item: Record | Sequence[Message | dict] | str) -> str:
        """The prompt text for a record, a conversation ending with a user turn, or a bare user message.

        >>> gen.render("Hi")  # doctest: +SKIP
        '<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n'
        """
        from tunesmith.prepare.templates import render_prompt

        return render_prompt(as_prompt_record(item), self.template, self.tokenizer)

    def count_tokens(self, prompt: str) -> int:
        """How many tokens a rendered prompt takes, counted as generation will feed it (0 for nothing)."""
        return int(_encode(self.tokenizer, [prompt], "cpu")[1].sum()) if prompt else 0

    def generate(self, prompts: Sequence[str], options: GenerationOptions, batch_size: int = 8,
                 progress: bool = False) -> list[Generation]:
        """Answer many rendered prompts, `batch_size` at a time, similar lengths together (less padding)."""
        from tqdm import tqdm

        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        results: list[Generation | None] = [None] * len(prompts)
        batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        for batch in tqdm(batches, desc="generating", unit="batch", disable=not progress):
            for i, generation in zip(batch, generate_batch(self.model, self.tokenizer,
                                                           [prompts[i] for i in batch], options)):
                results[i] = generation
        return results

    def stream(self, prompt: str, options: GenerationOptions) -> GenerationStream:
        return stream_generate(self.model, self.tokenizer, prompt, options)


def as_prompt_record(item: Record | Sequence[Message | dict] | str) -> Record:
    """Whatever the caller holds, as a record whose answer is still to be written.

    >>> as_prompt_record("Hi").messages
    (Message(role='user', content='Hi'), Message(role='assistant', content=''))
    """
    if isinstance(item, Record):
        return item
    if isinstance(item, str):
        item = [Message("user", item)]
    messages = tuple(m if isinstance(m, Message) else Message(m["role"], m["content"]) for m in item)
    if messages and messages[-1].role == "assistant":
        raise ValueError("the conversation already ends with an answer; the last message must be the user's")
    return Record("<prompt>", 1, "messages", messages=messages + (Message("assistant", ""),))


def read_run_info(model_dir: Path) -> dict | None:
    """The `tunesmith.json` next to a trained or exported model, or None for a plain model folder."""
    path = model_dir / RUN_INFO_FILE
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunError(f"{path}: not valid JSON ({e}); it is written by `tunesmith train`") from None
    if not isinstance(info, dict) or "base_model" not in info:
        raise RunError(f"{path}: missing 'base_model'; it is written by `tunesmith train`")
    return info


def locate_model(run_or_model: str) -> tuple[Path | None, dict | None]:
    """Where the weights are and what `tunesmith.json` says about them.

    `runs/x` (a run folder) -> (`runs/x/model`, info); `runs/x/model` or an exported folder -> (itself, info);
    anything else (alias, plain folder, hub name) -> (None, None).

    Raises:
        RunError: a run folder without a trained model.
    """
    path = Path(run_or_model).expanduser()
    if not path.is_dir():
        return None, None
    if is_run_folder(path):
        model_dir = path / "model"
        info = read_run_info(model_dir)
        if info is None:
            raise RunError(f"{path}: this run has no trained model yet ({model_dir / RUN_INFO_FILE} is missing); "
                           f"run `tunesmith train` first")
        return model_dir, info
    info = read_run_info(path)
    return (path, info) if info is not None else (None, None)


def _torch_dtype(precision: str, device):
    import torch

    from tunesmith.models import resolve_precision

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[
        resolve_precision(precision, device)]


def load_model_for(model_dir: Path | None, info: dict | None, which: str, model_config: ModelConfig,
                   dtype, device):
    """The weights to run: a full model as saved, LoRA adapters merged into their base, or the base itself."""
    from tunesmith.models import load_model

    if info is None or which == "base":
        return load_model(model_config, dtype=dtype, device=device)
    if not (model_dir / "adapter_config.json").is_file():
        return load_model(model_config.model_copy(update={"name": str(model_dir)}), dtype=dtype, device=device)
    import torch
    from peft import PeftModel

    # Merged in fp32 and then cast: the weights are exactly what `tunesmith export --merge` writes (and they run
    # faster than base + adapter).
    base = load_model(model_config, dtype=torch.float32)
    return PeftModel.from_pretrained(base, str(model_dir)).merge_and_unload().to(device=device, dtype=dtype)


def load_tokenizer_for(model_dir: Path | None, model_config: ModelConfig):
    """The tokenizer saved with the run (the one training used), else the base model's."""
    from tunesmith.models import load_tokenizer

    if model_dir is None or not (model_dir / "tokenizer_config.json").is_file():
        return load_tokenizer(model_config)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=model_config.trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_for_inference(run_or_model: str, which: Literal["finetuned", "base"] = "finetuned",
                       precision: str = "auto", device=None) -> Generator:
    """Load a run's model (or its base) with the template it was trained with, or any model with `auto`.

    Raises:
        RunError: a run folder without a trained model, or a broken `tunesmith.json`.
        ModelError: the model cannot be loaded; `which` is not finetuned/base.
    """
    from tunesmith.models import default_device

    if which not in ("finetuned", "base"):
        raise ModelError(f"which={which!r}: choose 'finetuned' or 'base'")
    model_dir, info = locate_model(run_or_model)
    device = device or default_device()
    dtype = _torch_dtype(precision, device)
    if info is None:
        model_config, template = ModelConfig(name=run_or_model), TemplateConfig()
    else:
        try:
            model_config = ModelConfig.model_validate({**(info.get("model") or {}), "name": info["base_model"]})
            template = TemplateConfig.model_validate(info.get("template") or {})
        except (ValidationError, TypeError) as e:
            raise RunError(f"{model_dir / RUN_INFO_FILE}: invalid model or template entry ({e}); it is written "
                           f"by `tunesmith train`") from None
    model = load_model_for(model_dir, info, which, model_config, dtype, device)
    model.eval()
    tokenizer = load_tokenizer_for(model_dir if which == "finetuned" else None, model_config)
    # a run is called by its folder name, whether given as runs/x or runs/x/model
    name = run_or_model if info is None else (
        model_dir.parent.name if model_dir.name in ("model", "model-merged") else model_dir.name)
    return Generator(model=model, tokenizer=tokenizer, template=template,
                     name=name if which == "finetuned" else f"{name}:base",
                     base_model=info["base_model"] if info else run_or_model,
                     method=(info or {}).get("method"))


class ChatSession:
    """A conversation with a model, kept inside its context window by dropping the oldest turns first.

    `/system` text goes in front of every prompt (the run's configured system prompt applies when none is set).
    """

    def __init__(self, generator: Generator, options: GenerationOptions, system: str | None = None):
        self.generator, self.options, self.system = generator, options, system
        self.messages: list[Message] = []

    def reset(self) -> None:
        self.messages = []

    def conversation(self) -> list[Message]:
        head = [Message("system", self.system)] if self.system else []
        return head + self.messages

    def fit(self) -> tuple[str, int]:
        """The prompt for the conversation so far and how many old messages had to go to leave room to answer.

        Raises:
            GenerationError: the latest message alone does not fit.
        """
        budget = self.generator.context_length - self.options.max_new_tokens
        dropped = 0
        while True:
            prompt = self.generator.render(self.conversation())
            if self.generator.count_tokens(prompt) <= budget:
                return prompt, dropped
            if len(self.messages) <= 1:
                self.messages = []
                raise GenerationError(f"that message is too long: with room for a {self.options.max_new_tokens}-token "
                                      f"answer it does not fit this model's {self.generator.context_length}-token "
                                      f"context")
            # drop the oldest exchange: a user turn and the answer that follows it
            cut = 2 if len(self.messages) > 2 and self.messages[1].role == "assistant" else 1
            self.messages = self.messages[cut:]
            dropped += cut

    def ask(self, text: str) -> Iterator[str]:
        """Stream the answer to `text`; the answer (even a cut-short one) joins the conversation."""
        self.messages.append(Message("user", text))
        prompt, _ = self.fit()
        pieces: list[str] = []
        try:
            with self.generator.stream(prompt, self.options) as stream:
                for piece in stream:
                    pieces.append(piece)
                    yield piece
        finally:
            self.messages.append(Message("assistant", "".join(pieces)))


PROMPT_KEYS = ("prompt", "instruction", "question")
"""Keys a prompts file may use for the question; `input` and `system` are read alongside, or `messages`."""


def prompt_record(row: object, file: str, line: int) -> Record:
    """One line of a prompts file as a record still to be answered.

    >>> prompt_record({"instruction": "Add", "input": "2+2"}, "p.jsonl", 1).input
    '2+2'

    Raises:
        DataError: the line is not an object with a prompt or a conversation ending with a user message.
    """
    if not isinstance(row, dict):
        raise DataError("expected a JSON object", file=file, line=line)
    if "messages" in row:
        messages = row["messages"]
        ok = isinstance(messages, list) and messages and all(
            isinstance(m, dict) and m.get("role") in ("system", "user", "assistant")
            and isinstance(m.get("content"), str) for m in messages)
        if not ok or messages[-1]["role"] != "user":
            raise DataError("expected a list of {role, content} messages ending with a user message",
                            file=file, line=line, field="messages")
        return Record(file, line, "messages",
                      messages=tuple(Message(m["role"], m["content"]) for m in messages) + (Message("assistant", ""),))
    key = next((k for k in PROMPT_KEYS if k in row), None)
    if key is None or not isinstance(row[key], str):
        raise DataError(f"expected a text field {' or '.join(PROMPT_KEYS)} (or messages)", file=file, line=line,
                        field=key)
    for extra in ("input", "system"):
        if row.get(extra) is not None and not isinstance(row[extra], str):
            raise DataError("expected text", file=file, line=line, field=extra)
    return Record(file, line, key, prompt=row[key], input=row.get("input") or "", system=row.get("system"))


def read_prompts(path: str | Path) -> list[tuple[dict, Record]]:
    """Every line of a JSONL prompts file: the row as written and the record to answer.

    Raises:
        DataError: listing every bad line (file, line, field).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("file not found", file=str(path))
    rows, problems = [], []
    with open(path, encoding="utf-8-sig", errors="strict") as f:
        try:
            lines = f.read().splitlines()
        except UnicodeDecodeError as e:
            raise DataError(f"not UTF-8 text ({e})", file=str(path)) from None
    for number, text in enumerate(lines, 1):
        if not text.strip():
            continue
        try:
            row = json.loads(text)
            rows.append((row, prompt_record(row, str(path), number)))
        except json.JSONDecodeError as e:
            problems.append(DataProblem(str(path), number, None, f"not valid JSON: {e.msg}"))
        except DataError as e:
            problems.extend(e.problems)
    if problems:
        raise DataError(problems)
    if not rows:
        raise DataError("no prompts in the file", file=str(path))
    return rows
