"""Tokenization: segments to token ids and labels, truncation, `max_length: auto`, and the pad-only collator.

Each template segment is encoded on its own and the pieces are concatenated, so a label is masked by the
POSITION its segment puts it at, never by looking for token ids: SmolLM2 uses one id (2) for both the pad and
the `<|im_end|>` end token, and the end token must carry loss while padding must not.

Truncation (`tokenization.truncation_side`):
- `left` (default): tokens are cut from the start, so the last answer survives whole when it fits; earlier
  prompt text (and, in a conversation, earlier turns) goes first. When the last answer alone is longer than
  `max_length`, the example keeps the end of its prompt (at most half of `max_length`) so the model still sees
  what it answers, then as much of the answer as fits: the answer's tail, end token included, is cut.
- `right`: tokens are cut from the end (the answer's tail first).
The rule itself is `tunesmith.data.lengths.kept_window`, the one `data inspect` predicts the cost with.
An example left with no loss-bearing token is not encoded (`None`); `prepare` drops and reports it.

`tokenize_for_model` is the step `prepare` and `data inspect` share: load the model's tokenizer, resolve the
template, tokenize, and resolve `max_length` against the model's context, so both see the same numbers.
"""

from __future__ import annotations

import re
import weakref
from dataclasses import dataclass
from enum import Enum
from typing import Callable, Sequence

from tunesmith.config import ModelConfig, TemplateConfig, TokenizationConfig
from tunesmith.data import Record
from tunesmith.data.lengths import kept_window
from tunesmith.data.text import percentile
from tunesmith.prepare.templates import Segment, render_prompt, render_segments, resolve_template_name
from tunesmith.prepare.word_encoder import WordEncoder, word_encoder

__all__ = ["IGNORE_INDEX", "MaskingStrategy", "Measured", "TokenizedRecord", "build_example", "encode_prompt",
           "encode_record", "encode_texts", "full_example", "group_pieces", "has_loss", "max_length_note",
           "measure_lengths", "render_records", "resolve_max_length", "segment_texts", "special_prefix",
           "tokenize_for_model", "tokenize_records"]

IGNORE_INDEX = -100
"""Label of a position that carries no loss (prompt, padding); the value torch's cross-entropy skips."""

BATCH_RECORDS = 512
"""Records tokenized per call of the (Rust, batched) tokenizer."""


class MaskingStrategy(str, Enum):
    """Which tokens carry the loss (`tokenization.train_on`)."""

    RESPONSES = "responses"
    """Only the answers (assistant turns) and their end token."""
    ALL = "all"
    """Every real token, prompt included (never padding)."""


@dataclass(frozen=True)
class TokenizedRecord:
    """The token ids of each segment of one record, before truncation."""

    pieces: tuple[tuple[int, ...], ...]
    trainable: tuple[bool, ...]

    @property
    def prompt_tokens(self) -> int:
        return sum(len(p) for p, t in zip(self.pieces, self.trainable) if not t)

    @property
    def response_tokens(self) -> int:
        return sum(len(p) for p, t in zip(self.pieces, self.trainable) if t)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.response_tokens

    @property
    def answer_start(self) -> int:
        """Position of the first token of the last trainable segment (0 when none): where truncation aims."""
        offsets, position = [], 0
        for piece in self.pieces:
            offsets.append(position)
            position += len(piece)
        return max((o for o, t in zip(offsets, self.trainable) if t), default=0)


def special_prefix(tokenizer) -> list[int]:
    """The ids a tokenizer puts before any text (a BOS for Llama-style tokenizers, nothing for SmolLM2).

    Segments are encoded without special tokens, so this prefix is added back once, in front.
    """
    with_special = tokenizer("a")["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    for start in range(len(with_special) - len(plain) + 1):
        if with_special[start:start + len(plain)] == plain:
            return list(with_special[:start])
    return []


def encode_texts(tokenizer, texts: list[str]) -> list[list[int]]:
    """The ids of each text, without special tokens, exactly as the tokenizer gives them.

    Fastest first: each text cut at the tokenizer's special tokens, every distinct part between them encoded once
    a batch (`_PieceSplit`), by the word-cache encoder where it reproduces the tokenizer
    (`tunesmith.prepare.word_encoder`), else by the tokenizer's own batch encode, which runs without the GIL and
    on the tokenizer's threads when `TOKENIZERS_PARALLELISM` allows. The first `VERIFIED_TEXTS` texts per
    tokenizer and `SPOT_CHECKED` of every call are compared with the tokenizer's encode of the whole text; a
    difference drops the shortcut that made it for good and encodes the call again without it.

    ["Hi", "4<|im_end|>"] -> [[26843], [36, 2]]   (SmolLM2)
    """
    if not texts:
        return []
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or getattr(backend, "truncation", None):
        # verbose=False: long examples are expected here and are truncated later, by our own rules.
        return tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
    pieces = _pieces_for(tokenizer, backend)
    split, words = pieces.split, pieces.words  # once: another thread may turn them off meanwhile
    if split is None or getattr(backend, "encode_special_tokens", False):  # special tokens read as plain text
        return _encode_whole(backend, texts)
    encoded = _encode_by_pieces(backend, split, pieces.ids, words, texts)
    checked = _checked_positions(len(texts), pieces.verified, words is not None)
    if [encoded[i] for i in checked] != _encode_whole(backend, [texts[i] for i in checked]):
        if words is not None:
            pieces.words = None
        else:
            pieces.split = None
        return encode_texts(tokenizer, texts)
    pieces.verified += len(texts)
    return encoded


VERIFIED_TEXTS = 64
"""Texts per tokenizer encoded both whole and by pieces, before the pieces alone are trusted (`_PieceSplit`)."""

SPOT_CHECKED = 4
"""Texts of every `encode_texts` call compared with the tokenizer's own encode while the word encoder is used."""


def _checked_positions(count: int, verified: int, spot_check: bool) -> list[int]:
    """Which of `count` texts `encode_texts` compares: the ones still among the tokenizer's first `VERIFIED_TEXTS`,
    and `SPOT_CHECKED` spread over the call when the word encoder made them.

    >>> _checked_positions(10, 60, False), _checked_positions(100, 64, True)
    ([0, 1, 2, 3], [0, 25, 50, 75])
    """
    first = set(range(min(count, max(0, VERIFIED_TEXTS - verified))))
    spots = set(range(0, count, max(1, count // SPOT_CHECKED))[:SPOT_CHECKED]) if spot_check else set()
    return sorted(first | spots)


@dataclass
class _PieceSplit:
    """How a tokenizer's texts are cut at its special tokens, so the text between them (the template's fixed
    parts, repeated by every record) is encoded once per batch instead of once per record.

    The tokenizer itself cuts a text at its special tokens before anything else and encodes the parts between
    them one by one, so the ids are the same; `encode_texts` still compares the first `VERIFIED_TEXTS` texts
    with the whole-text encode, and encodes whole texts for good on any difference (a pre-tokenizer that treats
    the start of the text differently, such as Metaspace's `prepend_scheme: first`).
    """

    split: Callable[[str], list[str]] | None
    """`re.split` with the special tokens captured: [text, token, text, ...]; None: encode whole texts."""
    ids: dict[str, int]
    words: WordEncoder | None = None
    """Encodes the parts between special tokens when it reproduces the tokenizer; None: the tokenizer does."""
    vocabulary: int = 0
    """The tokenizer's size with its added tokens when this was made: a token added since makes it anew."""
    verified: int = 0


_piece_splits: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _pieces_for(tokenizer, backend) -> _PieceSplit:
    """The tokenizer's `_PieceSplit`, made once: its special tokens that match exactly as written (not normalized,
    no whitespace stripped around them, not only as whole words), made again when tokens were added since."""
    size = backend.get_vocab_size(with_added_tokens=True)
    if tokenizer not in _piece_splits or _piece_splits[tokenizer].vocabulary != size:
        added = getattr(backend, "get_added_tokens_decoder", dict)().values()
        exact = {t.content: backend.token_to_id(t.content) for t in added
                 if t.content and not (t.normalized or t.lstrip or t.rstrip or t.single_word)}
        pattern = "(" + "|".join(re.escape(c) for c in sorted(exact, key=len, reverse=True)) + ")"
        _piece_splits[tokenizer] = _PieceSplit(re.compile(pattern).split if exact else None, exact,
                                               word_encoder(backend, set(exact)) if exact else None, size)
    return _piece_splits[tokenizer]


def _encode_whole(backend, texts: list[str]) -> list[list[int]]:
    # The Rust tokenizer's batch encode itself: the same ids as tokenizer(texts) without building a Python encoding
    # object per text; the fast variant skips the character offsets, which nothing here reads.
    if not texts:
        return []
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
    return [encoding.ids for encoding in encode(texts, add_special_tokens=False)]


def _encode_parts(backend, words: WordEncoder | None, parts: list[str]) -> list[list[int]]:
    """The ids of texts holding no special token: by `words` where it takes them, the rest by the tokenizer."""
    if words is None:
        return _encode_whole(backend, parts)
    encoded = words.encode(parts)
    others = [i for i, ids in enumerate(encoded) if ids is None]
    for i, ids in zip(others, _encode_whole(backend, [parts[i] for i in others])):
        encoded[i] = ids
    return encoded


def _encode_by_pieces(backend, split: Callable[[str], list[str]], special: dict[str, int],
                      words: WordEncoder | None, texts: list[str]) -> list[list[int]]:
    """Each text's ids from its parts: special tokens by their id, each distinct part between them encoded once.

    ["<|im_start|>user\nHi", "<|im_start|>user\nHo"] encodes "user\nHi" and "user\nHo", and no
    "<|im_start|>"; a part every record repeats ("assistant\n") is encoded once for the whole batch.
    """
    parts = [split(text) for text in texts]
    distinct = list(dict.fromkeys(p for cut in parts for p in cut[::2] if p))
    ids_of = dict(zip(distinct, _encode_parts(backend, words, distinct)))
    encoded = []
    for cut in parts:
        ids = list(ids_of[cut[0]]) if cut[0] else []
        for position in range(1, len(cut), 2):
            ids.append(special[cut[position]])
            if cut[position + 1]:
                ids += ids_of[cut[position + 1]]
        encoded.append(ids)
    return encoded


def render_records(records: Sequence[Record], tokenizer, template: TemplateConfig) -> list[list[Segment]]:
    """Each record's segments (`tunesmith.prepare.templates.render_segments`): the Python half of tokenizing.

    Raises:
        ConfigError, DataError: a record the template cannot render.
    """
    return [render_segments(r, template, tokenizer) for r in records]


def segment_texts(rendered: list[list[Segment]]) -> list[str]:
    """The texts to encode for `rendered`, every record's segments in order (what `group_pieces` takes back)."""
    return [s.text for segments in rendered for s in segments]


def group_pieces(rendered: list[list[Segment]], ids: list[list[int]], prefix: tuple[int, ...]) -> list[TokenizedRecord]:
    """The encoded segments (`ids`, in `segment_texts` order) grouped back per record, the tokenizer's special
    `prefix` (a BOS) put in front of each record that does not start with it.

    [[Segment("Q: ", False), Segment("4<|im_end|>", True)]], [[48, 42], [34, 2]], ()
    -> [TokenizedRecord(pieces=((48, 42), (34, 2)), trainable=(False, True))]
    """
    tokenized: list[TokenizedRecord] = []
    pieces_of = iter(ids)
    for segments in rendered:
        pieces = [tuple(next(pieces_of)) for _ in segments]
        trainable = [s.trainable for s in segments]
        if prefix and not (pieces and pieces[0][:len(prefix)] == prefix):
            pieces.insert(0, prefix)
            trainable.insert(0, False)
        tokenized.append(TokenizedRecord(tuple(pieces), tuple(trainable)))
    return tokenized


def tokenize_records(records: Sequence[Record], tokenizer, template: TemplateConfig) -> list[TokenizedRecord]:
    """Render and encode every record, segment by segment (batched; a progress bar for large files).

    [qa record "2+2?" -> "4"] -> [TokenizedRecord(pieces=((...prompt ids...), (34, 2)), trainable=(False, True))]
    """
    from tqdm.auto import tqdm

    prefix = tuple(special_prefix(tokenizer))
    tokenized: list[TokenizedRecord] = []
    with tqdm(total=len(records), desc="tokenizing", unit="ex", disable=len(records) < 5000, leave=False) as bar:
        for start in range(0, len(records), BATCH_RECORDS):
            rendered = render_records(records[start:start + BATCH_RECORDS], tokenizer, template)
            tokenized += group_pieces(rendered, encode_texts(tokenizer, segment_texts(rendered)), prefix)
            bar.update(len(rendered))
    return tokenized


def full_example(tokenized: TokenizedRecord, tokenization: TokenizationConfig) -> tuple[list[int], list[int]]:
    """The pieces concatenated and labelled by position, before truncation.

    pieces ((5, 6), (7, 2)), trainable (False, True), train_on=responses -> ([5, 6, 7, 2], [-100, -100, 7, 2])
    """
    train_all = MaskingStrategy(tokenization.train_on) is MaskingStrategy.ALL
    input_ids: list[int] = []
    labels: list[int] = []
    for piece, trainable in zip(tokenized.pieces, tokenized.trainable):
        input_ids.extend(piece)
        labels.extend(piece if trainable or train_all else [IGNORE_INDEX] * len(piece))
    return input_ids, labels


def has_loss(labels) -> bool:
    """Whether any label after the first carries a loss: a causal LM predicts token t from the tokens before it,
    so the first position's label never counts."""
    return any(label != IGNORE_INDEX for label in labels[1:])


def build_example(tokenized: TokenizedRecord, tokenization: TokenizationConfig, max_length: int) -> dict | None:
    """Concatenate the pieces, label them by position, truncate; None when no token is left to learn from.

    pieces ((5, 6), (7, 2)), trainable (False, True), train_on=responses
    -> {"input_ids": [5, 6, 7, 2], "labels": [-100, -100, 7, 2]}
    """
    input_ids, labels = full_example(tokenized, tokenization)
    start, end = kept_window(tokenized.total_tokens, tokenized.answer_start, max_length, tokenization.truncation_side)
    input_ids, labels = input_ids[start:end], labels[start:end]
    return {"input_ids": input_ids, "labels": labels} if has_loss(labels) else None


def encode_record(record: Record, tokenizer, template: TemplateConfig, tokenization: TokenizationConfig,
                  max_length: int) -> dict | None:
    """One record as `{"input_ids", "labels"}` (labels -100 where no loss), or None when nothing is trainable.

    qa record "2+2?" -> "4" with SmolLM2:
    {"input_ids": [...prompt..., 34, 2], "labels": [-100, ..., -100, 34, 2]}   (2 = <|im_end|>, trained)
    """
    return build_example(tokenize_records([record], tokenizer, template)[0], tokenization, max_length)


def encode_prompt(record: Record, tokenizer, template: TemplateConfig) -> list[int]:
    """The ids generation starts from: exactly the prompt tokens training saw before the answer."""
    return special_prefix(tokenizer) + encode_texts(tokenizer, [render_prompt(record, template, tokenizer)])[0]


def measure_lengths(records: Sequence[Record], tokenizer, template: TemplateConfig) -> list[tuple[int, int]]:
    """(prompt tokens, response tokens incl. the end token) per record, after templating, before truncation.

    [qa record "2+2?" -> "4"] -> [(16, 2)]
    """
    return [(t.prompt_tokens, t.response_tokens) for t in tokenize_records(records, tokenizer, template)]


def resolve_max_length(tokenization: TokenizationConfig, totals: Sequence[int], model_context: int) -> int:
    """`max_length: auto` -> the p99 of the examples' total lengths; an int as given. Either is capped by the
    model's context: positions beyond it were never trained, and examples that long could not be served
    (`max_length_note` says so when a given length is cut).

    >>> resolve_max_length(TokenizationConfig(), list(range(1, 101)), 2048)
    99
    >>> resolve_max_length(TokenizationConfig(), list(range(1, 101)), 64)
    64
    >>> resolve_max_length(TokenizationConfig(max_length=4096), [], 2048)
    2048
    """
    if tokenization.max_length != "auto":
        return min(int(tokenization.max_length), model_context)
    if not totals:
        return model_context
    return min(percentile(totals, 99), model_context)


def max_length_note(tokenization: TokenizationConfig, model_context: int) -> str | None:
    """What the prepare summary says when an explicit `tokenization.max_length` was capped by the model's context
    (`resolve_max_length`), else None.

    >>> max_length_note(TokenizationConfig(max_length=4096), 2048)
    "tokenization.max_length=4096 is longer than the model's context: capped at 2048 tokens"
    """
    if tokenization.max_length == "auto" or int(tokenization.max_length) <= model_context:
        return None
    return (f"tokenization.max_length={tokenization.max_length} is longer than the model's context: "
            f"capped at {model_context} tokens")


@dataclass(frozen=True)
class Measured:
    """Records tokenized with a model's tokenizer and template, and the `max_length` their lengths resolve to."""

    tokenized: list[TokenizedRecord]
    """One per record, in order, before truncation."""
    template: str
    """The template actually used (`auto` resolved to `chat` or `alpaca`)."""
    model_context: int
    """The model's context length in tokens: `max_length: auto` never exceeds it."""
    max_length: int

    @property
    def lengths(self) -> list[tuple[int, int]]:
        """(prompt tokens, response tokens) per record, what `tunesmith.data.stats` takes."""
        return [(t.prompt_tokens, t.response_tokens) for t in self.tokenized]


def tokenize_for_model(records: Sequence[Record], model: ModelConfig, template: TemplateConfig,
                       tokenization: TokenizationConfig) -> Measured:
    """Load the model's tokenizer, tokenize the records, resolve `max_length` with the model's context.

    Raises:
        ModelError: the tokenizer or the model's config cannot be loaded.
        ConfigError: the template cannot work with this tokenizer or these records.
    """
    from tunesmith.models import context_length, load_model_config, load_tokenizer

    tokenizer = load_tokenizer(model)
    template_name = resolve_template_name(template, tokenizer)
    tokenized = tokenize_records(records, tokenizer, template)
    model_context = context_length(load_model_config(model))
    max_length = resolve_max_length(tokenization, [t.total_tokens for t in tokenized], model_context)
    return Measured(tokenized, template_name, model_context, max_length)
