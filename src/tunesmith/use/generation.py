"""Text generation from a model, shared by evaluation, chat and serve.

One place decides how a prompt becomes text: the run's own template renders it (`tunesmith.prepare.templates`), the
batch is left-padded so every row ends where its answer starts, transformers' `generate` decodes with the KV
cache, and the answer stops at the end token (eos or the chat template's end-of-turn token) or a stop string.
Greedy unless asked to sample, so evaluation is repeatable.

torch and transformers are imported inside functions: `GenerationOptions` is cheap to import anywhere.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Literal, Sequence

from pydantic import ValidationError

from tunesmith.config import DecodingConfig, ModelConfig, TemplateConfig
from tunesmith.data.prompts import as_prompt_record
from tunesmith.data.records import Message, Record
from tunesmith.data.strip import STRIPPERS, unbake
from tunesmith.errors import GenerationError, ModelError, RunError
from tunesmith.runs import RUN_INFO_FILE, locate_model

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class GenerationOptions:
    """How to decode. Greedy unless `do_sample`, so the same prompt always gives the same answer; the answer
    length has no default here because each use has its own (`DecodingConfig` and its sections, `EvalConfig`)."""

    max_new_tokens: int
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

    @classmethod
    def from_config(cls, decoding: DecodingConfig) -> GenerationOptions:
        """The options a decoding section asks for: temperature 0 means greedy."""
        sample = decoding.temperature > 0
        return cls(max_new_tokens=decoding.max_new_tokens, do_sample=sample,
                   temperature=decoding.temperature if sample else 1.0, top_p=decoding.top_p, seed=decoding.seed,
                   stop=tuple(decoding.stop))


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
    """A model ready to answer: weights, tokenizer and the template it was trained with, kept together.

    `stripped_form` is the baked-in template training stripped from its prompts (`tunesmith.json`'s
    `stripped_template`): a user who pastes a prompt in that form gets the answer training taught for it.
    """

    model: object
    tokenizer: object
    template: TemplateConfig
    name: str
    base_model: str
    method: str | None = None
    stripped_form: str | None = None

    @property
    def context_length(self) -> int:
        from tunesmith.models import context_length

        return context_length(self.model.config)

    def render(self, item: Record | Sequence[Message | dict] | str) -> str:
        """The prompt text for a record, a conversation ending with a user turn, or a bare user message.

        A prompt in the baked-in form training stripped is stripped first (`unbake`), so it renders as the
        plain question does.

        >>> gen.render("Hi")  # doctest: +SKIP
        '<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n'
        """
        from tunesmith.prepare.templates import render_prompt

        return render_prompt(unbake(as_prompt_record(item), self.stripped_form), self.template, self.tokenizer)

    def count_tokens(self, prompt: str) -> int:
        """How many tokens a rendered prompt takes, counted as generation will feed it (0 for nothing)."""
        return int(_encode(self.tokenizer, [prompt], "cpu")[1].sum()) if prompt else 0

    def generate(self, prompts: Sequence[str], options: GenerationOptions, batch_size: int,
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


def load_for_inference(run_or_model: str, which: Literal["finetuned", "base"] = "finetuned",
                       precision: str = "auto", device=None) -> Generator:
    """Load a run's model (or its base) with the template it was trained with, or any model with `auto`.

    Raises:
        RunError: a run folder without a trained model, or a broken `tunesmith.json` (an unknown stripped form too).
        ModelError: the model cannot be loaded; `which` is not finetuned/base.
    """
    from tunesmith.models import default_device, load_model_for, load_tokenizer_for, torch_dtype

    if which not in ("finetuned", "base"):
        raise ModelError(f"which={which!r}: choose 'finetuned' or 'base'")
    model_dir, info = locate_model(run_or_model)
    device = device or default_device()
    dtype = torch_dtype(precision, device)
    if info is None:
        model_config, template = ModelConfig(name=run_or_model), TemplateConfig()
    else:
        try:
            model_config = ModelConfig.model_validate({**(info.get("model") or {}), "name": info["base_model"]})
            template = TemplateConfig.model_validate(info.get("template") or {})
            if info.get("stripped_template") not in (None, *STRIPPERS):  # prompts could not be stripped as trained
                raise TypeError(f"stripped_template={info['stripped_template']!r} is none of {', '.join(STRIPPERS)}")
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
                     method=(info or {}).get("method"), stripped_form=(info or {}).get("stripped_template"))
