"""Byte-level BPE in Python with a cache of words: the tokenizer's own ids at about a quarter of its CPU.

Why: the tokenizers library spends ~1.9 µs a token on this machine building offset-tracked strings and an
`Encoding` per text, and prepare encodes every record's text (at a million records of ~137 tokens, ~250 of
~350 CPU-seconds). A byte-level BPE tokenizer cuts a text into words with its pre-tokenizer's regexes, maps each
word's bytes to characters and merges each word on its own, so a text's ids are its words' ids put together. A
dataset repeats a few tens of thousands of distinct words, so a dict from word to ids runs the merges once per
word (tiktoken works the same way): 0.26 → 0.06 ms CPU a record here, the same ids.

Exact where the split is, so `word_encoder` takes only tokenizers whose pipeline this reproduces: no normalizer
(or a Unicode normal form, a no-op on ASCII); pre-tokenizers `Split` (a regex, matches isolated),
`Digits(individual_digits)` and a final `ByteLevel` (its GPT-2 regex when `use_regex`, no prefix space); a BPE
model without dropout or word affixes; only added tokens that `tokenization` cuts out of the text before this
sees it. And it takes only texts of printable ASCII plus tab, newline, carriage return, vertical tab and form
feed, where Python's `re` and the tokenizer's Oniguruma agree on letters, digits and spaces (the patterns'
`\\p{L}` and `\\p{N}` become `A-Za-z` and `0-9`); other texts go to the tokenizer. `tokenization.encode_texts`
still compares some texts of every batch with the tokenizer's own encode and drops this encoder on a difference.
"""

from __future__ import annotations

import json
import re
from itertools import chain

__all__ = ["WordEncoder", "ascii_pattern", "word_encoder"]

GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
"""The regex of a `ByteLevel` pre-tokenizer with `use_regex` (the tokenizers library's, GPT-2's)."""

DIGITS_PATTERN = r"\p{N}|[^\p{N}]+"
"""`Digits(individual_digits=True)`: every digit a word of its own, the text between them kept whole."""

CACHED_WORDS = 200_000
"""Distinct words whose ids are kept (~250 bytes each); past that, new words are merged each time they occur."""

_PLAIN = re.compile(r"[\t\n\x0b\x0c\r -~]*")
"""Texts this encoder takes: printable ASCII and the whitespace that every regex engine counts as `\\s`."""

_ASCII_CLASSES = {"L": "A-Za-z", "N": "0-9"}
"""What the Unicode classes the tokenizers' patterns use are, on ASCII text."""

_NORMAL_FORMS = {"NFC", "NFD", "NFKC", "NFKD"}


def ascii_pattern(pattern: str) -> re.Pattern | None:
    """A tokenizer's split regex as a Python `re` that splits ASCII text the same way: `\\p{L}` and `\\p{N}` as
    their ASCII letters and digits, inside a character class or standing alone; None for any other Unicode class
    or a pattern `re` cannot compile.

    >>> ascii_pattern(r" ?\\p{L}+|[^\\s\\p{N}]").pattern
    ' ?[A-Za-z]+|[^\\\\s0-9]'
    """
    out, in_class, position = [], False, 0
    while position < len(pattern):
        char = pattern[position]
        if char == "\\" and pattern.startswith(("\\p{", "\\P{"), position):
            end = pattern.find("}", position)
            name = pattern[position + 3:end] if end > 0 else ""
            if pattern[position + 1] == "P" or name not in _ASCII_CLASSES:
                return None
            out.append(_ASCII_CLASSES[name] if in_class else f"[{_ASCII_CLASSES[name]}]")
            position = end + 1
            continue
        if char == "\\":
            out.append(pattern[position:position + 2])
            position += 2
            continue
        if char == "[" and not in_class:
            in_class = True
        elif char == "]" and in_class:
            in_class = False
        out.append(char)
        position += 1
    try:
        return re.compile("".join(out))
    except re.error:
        return None


def _byte_chars() -> str:
    """ByteLevel's byte-to-character table for the ASCII bytes: printable ones stand for themselves, the others
    (space, controls) are moved past 255 in byte order, as GPT-2 does it."""
    printable = set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    moved = [b for b in range(256) if b not in printable]
    return "".join(chr(b) if b in printable else chr(256 + moved.index(b)) for b in range(128))


class WordEncoder:
    """Ids of ASCII texts from a dict of word → ids, filled from the tokenizer's BPE model on a miss."""

    def __init__(self, model, splits: list[re.Pattern]):
        self._model = model
        self._splits = splits
        self._ids: dict[str, tuple[int, ...]] = {}
        self._byte_chars = {i: c for i, c in enumerate(_byte_chars())}

    def _words(self, text: str) -> list[str]:
        words = [text]
        for pattern in self._splits:
            words = [piece for word in words for piece in _split_isolated(pattern, word)]
        return words

    def _merged(self, word: str) -> tuple[int, ...]:
        ids = tuple(token.id for token in self._model.tokenize(word.translate(self._byte_chars)))
        if len(self._ids) < CACHED_WORDS:
            self._ids[word] = ids
        return ids

    def encode(self, texts: list[str]) -> list[list[int] | None]:
        """Each text's ids, or None for a text this encoder does not take (not plain ASCII).

        ["Hi there", "ü"] -> [[26843, 655], None]   (SmolLM2)
        """
        known, merged, plain = self._ids.get, self._merged, _PLAIN.fullmatch
        encoded: list[list[int] | None] = []
        for text in texts:
            if plain(text) is None:
                encoded.append(None)
                continue
            words = self._words(text)
            ids = list(map(known, words))
            if None in ids:
                ids = [found if found is not None else merged(word) for found, word in zip(ids, words)]
            encoded.append(list(chain.from_iterable(ids)))
        return encoded


def _split_isolated(pattern: re.Pattern, text: str) -> list[str]:
    """`text` cut at `pattern`'s matches, each match a piece and the text between matches too (a `Split`
    pre-tokenizer with behavior `Isolated`). The tokenizers' patterns match every character, so `findall` is
    the answer; only when it is not is the text between matches added back."""
    words = pattern.findall(text)
    if sum(map(len, words)) == len(text):
        return words
    pieces, position = [], 0
    for match in pattern.finditer(text):
        if match.start() > position:
            pieces.append(text[position:match.start()])
        if match.end() > match.start():
            pieces.append(match.group())
        position = match.end()
    if position < len(text):
        pieces.append(text[position:])
    return pieces


def _split_patterns(pre_tokenizer: dict | None) -> list[str] | None:
    """The pre-tokenizer as the regexes that cut a text into words, in order; None when it is not one this module
    reproduces (anything but Split/Digits steps and a final ByteLevel)."""
    if pre_tokenizer is None:
        return None
    steps = pre_tokenizer["pretokenizers"] if pre_tokenizer.get("type") == "Sequence" else [pre_tokenizer]
    patterns: list[str] = []
    for index, step in enumerate(steps):
        kind, last = step.get("type"), index == len(steps) - 1
        if kind == "Split" and step.get("behavior") == "Isolated" and not step.get("invert") \
                and "Regex" in (step.get("pattern") or {}):
            patterns.append(step["pattern"]["Regex"])
        elif kind == "Digits" and step.get("individual_digits"):
            patterns.append(DIGITS_PATTERN)
        elif kind == "ByteLevel" and last and not step.get("add_prefix_space"):
            if step.get("use_regex", True):
                patterns.append(GPT2_PATTERN)
            return patterns or None
        else:
            return None
    return None  # no ByteLevel step: not byte-level BPE


def _plain_normalizer(normalizer: dict | None) -> bool:
    """No normalizer, or only Unicode normal forms (which leave ASCII text as it is)."""
    if normalizer is None:
        return True
    steps = normalizer["normalizers"] if normalizer.get("type") == "Sequence" else [normalizer]
    return all(step.get("type") in _NORMAL_FORMS for step in steps)


def word_encoder(backend, cut_tokens: set[str]) -> WordEncoder | None:
    """A `WordEncoder` for the tokenizers-library tokenizer `backend`, or None when its pipeline is not one this
    module reproduces exactly (see the module docstring). `cut_tokens` are the added tokens the caller cuts out
    of every text first; any other added token could sit inside a text, so it rules the encoder out."""
    spec = json.loads(backend.to_str())
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or model.get("dropout") or model.get("continuing_subword_prefix") \
            or model.get("end_of_word_suffix") or not _plain_normalizer(spec.get("normalizer")):
        return None
    if any(token["content"] not in cut_tokens for token in spec.get("added_tokens") or []):
        return None
    patterns = _split_patterns(spec.get("pre_tokenizer"))
    splits = [ascii_pattern(p) for p in patterns] if patterns else None
    if not splits or None in splits:
        return None
    return WordEncoder(backend.model, splits)
