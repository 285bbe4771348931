"""The word-cache encoder gives the tokenizer's own ids, for every pre-tokenizer it takes, and refuses the rest."""

from __future__ import annotations

import random

import pytest

from tunesmith.prepare import tokenization, word_encoder
from tunesmith.prepare.word_encoder import ascii_pattern

LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
PIECES = ["it's", "we'll", "DON'T", "They'RE", "I'm", "x'd", "hello", "World", "a", "12345", "7", "3.14", " ", "  ",
          "\t", "\n", "\r\n", "\n\n", "\x0b", "\x0c", "   \n", ".", ",", "!?", "#", "<|", "|>", "[x]", "{}", "()", '"',
          "/", "\\", "-", "_", "~", "@user", "snake_case", "CamelCase", "x=1;", "'", "''", "' s", "end."]


def ascii_texts(count: int, seed: int = 0) -> list[str]:
    """Random texts of the pieces above: contractions in any case, digit runs, every kind of ASCII whitespace and
    its runs, punctuation stuck to words or not."""
    rng = random.Random(seed)
    texts = ["", " ", "\n", "  leading", "trailing  ", "a  b", "a \n b", "x\t\ty", "12 345 6789", "'s'll"]
    for _ in range(count):
        texts.append("".join(rng.choice(PIECES) + rng.choice(["", " ", "", "\n"]) for _ in range(rng.randint(1, 25))))
    return texts


def bpe_tokenizer(pre_tokenizer, normalizer=None, added=()):
    """A byte-level BPE trained here on the test texts, with `<|end|>` as a special token."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, trainers

    backend = Tokenizer(models.BPE())
    backend.normalizer = normalizer
    backend.pre_tokenizer = pre_tokenizer
    trainer = trainers.BpeTrainer(vocab_size=600, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<|end|>"], show_progress=False)
    backend.train_from_iterator(ascii_texts(400, seed=1), trainer)
    for token in added:
        backend.add_tokens([AddedToken(token, normalized=True)])
    return backend


def byte_level(use_regex: bool = True, add_prefix_space: bool = False):
    from tokenizers import pre_tokenizers

    return pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space, use_regex=use_regex)


def split_then_bytes(pattern: str):
    from tokenizers import Regex, pre_tokenizers

    return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
                                    byte_level(use_regex=False)])


def digits_then_bytes():
    from tokenizers import pre_tokenizers

    return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level()])


def reference(backend, texts: list[str]) -> list[list[int]]:
    return [e.ids for e in backend.encode_batch(texts, add_special_tokens=False)]


@pytest.mark.parametrize("make", [byte_level, lambda: split_then_bytes(LLAMA3_PATTERN),
                                  lambda: split_then_bytes(QWEN2_PATTERN), digits_then_bytes],
                         ids=["gpt2-bytelevel", "llama3-split", "qwen2-split", "digits-bytelevel"])
def test_ascii_texts_get_the_tokenizers_own_ids(make):
    from tokenizers import normalizers

    backend = bpe_tokenizer(make(), normalizer=normalizers.NFC())
    encoder = word_encoder.word_encoder(backend, {"<|end|>"})
    assert encoder is not None
    texts = ascii_texts(600, seed=2)
    assert encoder.encode(texts) == reference(backend, texts)
    assert encoder.encode(texts) == reference(backend, texts)  # from the cache the second time


def test_the_default_models_tokenizer_gets_its_own_ids_and_non_ascii_goes_to_the_tokenizer(tokenizer):
    encoder = word_encoder.word_encoder(tokenizer.backend_tokenizer, set(tokenizer.get_added_vocab()))
    assert encoder is not None
    texts = ascii_texts(600, seed=3)
    assert encoder.encode(texts) == reference(tokenizer.backend_tokenizer, texts)
    plain = reference(tokenizer.backend_tokenizer, ["tab\tok"])[0]
    assert encoder.encode(["café", "tab\tok", "bell\x07", "sep\x1c"]) == [None, plain, None, None]


def test_a_full_cache_still_gives_the_right_ids(monkeypatch):
    monkeypatch.setattr(word_encoder, "CACHED_WORDS", 3)
    backend = bpe_tokenizer(byte_level())
    encoder = word_encoder.word_encoder(backend, {"<|end|>"})
    texts = ascii_texts(100, seed=4)
    assert encoder.encode(texts) == reference(backend, texts)
    assert len(encoder._ids) == 3


@pytest.mark.parametrize("change", ["metaspace", "prefix space", "lowercase", "dropout", "added token",
                                    "unicode class"])
def test_tokenizers_it_does_not_reproduce_are_left_to_the_tokenizer(change):
    from tokenizers import normalizers, pre_tokenizers

    if change == "metaspace":
        backend = bpe_tokenizer(pre_tokenizers.Metaspace())
    elif change == "prefix space":
        backend = bpe_tokenizer(byte_level(add_prefix_space=True))
    elif change == "lowercase":
        backend = bpe_tokenizer(byte_level(), normalizer=normalizers.Lowercase())
    elif change == "dropout":
        backend = bpe_tokenizer(byte_level())
        backend.model.dropout = 0.1
    elif change == "added token":
        backend = bpe_tokenizer(byte_level(), added=["hello"])
    else:
        backend = bpe_tokenizer(split_then_bytes(r"\p{Lu}+|[^\p{Lu}]+"))
    assert word_encoder.word_encoder(backend, {"<|end|>"}) is None


def test_unicode_classes_become_ascii_ones_inside_and_outside_brackets():
    assert ascii_pattern(r"\p{L}+|[^\s\p{L}\p{N}]").pattern == r"[A-Za-z]+|[^\sA-Za-z0-9]"
    assert ascii_pattern(r"\p{Lu}") is None and ascii_pattern(r"\P{L}") is None and ascii_pattern("(") is None


def test_a_word_encoder_that_differs_is_dropped_and_the_call_encoded_again(tokenizer, monkeypatch):
    """The spot checks of every call: a wrong id from the word encoder never reaches the caller."""
    monkeypatch.setattr(tokenization, "_piece_splits", tokenization.weakref.WeakKeyDictionary())
    monkeypatch.setattr(tokenization, "VERIFIED_TEXTS", 0)
    texts = [f"<|im_start|>user\nQuestion {i}?<|im_end|>" for i in range(40)]
    expected = reference(tokenizer.backend_tokenizer, texts)
    assert tokenization.encode_texts(tokenizer, texts) == expected
    pieces = tokenization._piece_splits[tokenizer]
    assert pieces.words is not None
    monkeypatch.setattr(pieces.words, "encode", lambda parts: [[0] for _ in parts])
    assert tokenization.encode_texts(tokenizer, texts) == expected
    assert pieces.words is None and pieces.split is not None  # the cut at special tokens stays
