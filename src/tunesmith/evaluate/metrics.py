"""Text metrics of one answer against its reference, and their averages with bootstrap intervals.

Every metric is on a 0-100 scale (as sacrebleu and the SQuAD script report them), per example; error shares
are fractions 0-1. Words are `tunesmith.data.text.words` for every script, so Chinese, Japanese or Thai answers
are compared character by character instead of as one long word that never matches.

Key-fact recall leads: ROUGE-L and BLEU reward the wording every answer shares (a sign-off, the phrasing of a
question type), so a model that learned the house style but puts one product's facts on another still scores
high on them. Key-fact recall counts only the words that set a reference apart from the others of the
evaluation set, which is why its key words are computed from all references at once (`distinctive_words`).

Pure functions: no torch, no model; `rouge-score`, `sacrebleu` and numpy are imported when first used.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from functools import lru_cache
from typing import Sequence

from tunesmith.data.text import WordTokenizer, words

METRICS = ("key_fact_recall", "exact_match", "exact_match_normalized", "token_f1", "rouge_l", "bleu", "chrf")
"""Per-example generation metrics, in the order tables show them (the content metric first)."""

KEY_WORD_MAX_SHARE = 0.1
"""A reference word is distinctive when at most this share of the evaluation set's references contain it."""

ERROR_CATEGORIES = ("empty", "length", "repetitive")
"""Ways an answer fails regardless of its content: nothing said, cut off at max_new_tokens, looping."""

REPETITION_NGRAM = 4
REPETITION_THRESHOLD = 0.5
"""An answer is repetitive when more than half of its words lie inside a word 4-gram that occurs twice or more."""


# ---------------------------------------------------------------- text metrics (pure, 0-100)

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD v1.1 answer normalization: lowercase, drop ASCII punctuation and the articles a/an/the, collapse
    whitespace.

    >>> normalize_answer("  The Cat, sat!\\n")
    'cat sat'
    """
    text = "".join(c for c in text.lower() if c not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, reference: str, normalized: bool = False) -> float:
    """100 when the strings are identical (raw: after stripping surrounding whitespace), else 0.

    >>> exact_match("Paris.", "paris"), exact_match("Paris.", "paris", normalized=True)
    (0.0, 100.0)
    """
    if normalized:
        return 100.0 * (normalize_answer(prediction) == normalize_answer(reference))
    return 100.0 * (prediction.strip() == reference.strip())


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD token F1 on normalized words: harmonic mean of word precision and recall (bag of words).

    The words are `words()` of the normalized answers: on ASCII text exactly the SQuAD script's whitespace
    split, and one token per character in Chinese, Japanese or Thai, so a nearly right answer there earns
    partial credit instead of failing as one unmatched "word".
    Two empty answers agree fully; one empty answer scores 0.

    >>> round(token_f1("the big red car", "a red car"), 1)  # 2 shared of 3 predicted, 2 of 2 reference
    80.0
    >>> round(token_f1("东京是日本的首都", "日本的首都是东京"), 1)  # the same 8 characters, reordered
    100.0
    """
    pred, ref = words(normalize_answer(prediction)), words(normalize_answer(reference))
    if not pred or not ref:
        return 100.0 * (pred == ref)
    shared = sum((Counter(pred) & Counter(ref)).values())
    if shared == 0:
        return 0.0
    precision, recall = shared / len(pred), shared / len(ref)
    return 100.0 * 2 * precision * recall / (precision + recall)


@lru_cache(maxsize=1)
def _rouge_scorer():
    """rouge-score's own tokenizer keeps only [a-z0-9], which scores any other script as empty; `WordTokenizer`
    gives the same tokens on ASCII and the letters, digits or characters of every other script."""
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False, tokenizer=WordTokenizer())


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure (longest common word subsequence), via `rouge-score`, no stemming.

    >>> round(rouge_l("the cat sat on the mat", "the cat is on the mat"), 2)  # LCS 5 of 6 both ways
    83.33
    """
    return 100.0 * _rouge_scorer().score(reference, prediction)["rougeL"].fmeasure


def sentence_bleu(prediction: str, reference: str) -> float:
    """sacrebleu's sentence BLEU (13a tokenization, exponential smoothing), 0-100."""
    import sacrebleu

    return sacrebleu.sentence_bleu(prediction, [reference]).score


def sentence_chrf(prediction: str, reference: str) -> float:
    """sacrebleu's sentence chrF (character 6-grams, beta 2), 0-100."""
    import sacrebleu

    return sacrebleu.sentence_chrf(prediction, [reference]).score


# ---------------------------------------------------------------- key-fact recall

def is_number(word: str) -> bool:
    """A word with a digit in it: a price, a size, a year, a model number.

    >>> is_number("1200"), is_number("a4"), is_number("watts")
    (True, True, False)
    """
    return any(c.isdigit() for c in word)


def distinctive_words(references: Sequence[str], questions: Sequence[str] | None = None,
                      max_share: float = KEY_WORD_MAX_SHARE) -> list[set[str]]:
    """The key words of each reference: its numbers and rare words, less those its question already says.

    A word (`words()`: letters and digits, one per character in Chinese, Japanese or Thai) is distinctive when
    it has a digit or at most max(1, max_share x N) of the N distinct references contain it. A sign-off that
    every answer ends with and the wording of a question type ("costs ... euros") are in many references and
    drop out; names, numbers, colours and places stay. With `questions` (one per reference), words the question
    holds are left out too: echoing "the Plover air fryer" from the question is no fact learned.
    Falling back so every reference with words has something to recall: when the question holds all the
    distinctive words they stay; when no word is distinctive, the reference's rarest words are key.
    Identical references count once (the same fact asked twice is no less distinctive); a reference alone is
    all key words.

    >>> refs = ["The Wren kettle holds 1.7 litres. Happy to help.",
    ...         "The Heron blender costs 89 euros. Happy to help.", "The Finch toaster costs 45 euros. Happy to help."]
    >>> [sorted(k) for k in distinctive_words(refs)]
    [['1', '7', 'holds', 'kettle', 'litres', 'wren'], ['89', 'blender', 'heron'], ['45', 'finch', 'toaster']]
    >>> sorted(distinctive_words(refs, ["How big is the Wren kettle?", "", ""])[0])
    ['1', '7', 'holds', 'litres']
    """
    vocabularies = {ref: set(words(ref)) for ref in references}
    frequency = Counter(w for vocabulary in vocabularies.values() for w in vocabulary)
    most = max(1.0, max_share * len(vocabularies))
    keys = []
    for i, ref in enumerate(references):
        vocabulary = vocabularies[ref]
        key = {w for w in vocabulary if is_number(w) or frequency[w] <= most}
        if not key and vocabulary:
            rarest = min(frequency[w] for w in vocabulary)
            key = {w for w in vocabulary if frequency[w] == rarest}
        asked = set(words(questions[i])) if questions is not None else set()
        keys.append(key - asked or key)
    return keys


def key_fact_recall(prediction: str, key_words: set[str]) -> float:
    """Share (0-100) of a reference's key words (`distinctive_words`) that the answer contains, anywhere in it.

    Boilerplate cannot raise it, since shared wording is not among the key words; an answer that names the
    wrong product or number loses exactly those words. No key words (an empty reference): an answer without
    words agrees fully, any other scores 0.

    >>> key_fact_recall("It holds 1.7 litres, the Wren kettle.", {"wren", "kettle", "1", "7", "litres"})
    100.0
    >>> key_fact_recall("The Wren kettle holds 1.5 litres.", {"wren", "kettle", "1", "7", "litres"})
    80.0
    """
    said = set(words(prediction))
    if not key_words:
        return 100.0 * (not said)
    return 100.0 * len(key_words & said) / len(key_words)


def example_metrics(prediction: str, reference: str, key_words: set[str] | None = None) -> dict[str, float]:
    """Every per-example metric of one answer against its reference.

    `key_words` are the reference's distinctive words within its evaluation set (`distinctive_words` of all
    references); without them the reference stands alone, so all its words are key.

    >>> example_metrics("Paris", "Paris")["rouge_l"]
    100.0
    """
    if key_words is None:
        key_words = distinctive_words([reference])[0]
    return {
        "key_fact_recall": key_fact_recall(prediction, key_words),
        "exact_match": exact_match(prediction, reference),
        "exact_match_normalized": exact_match(prediction, reference, normalized=True),
        "token_f1": token_f1(prediction, reference),
        "rouge_l": rouge_l(prediction, reference),
        "bleu": sentence_bleu(prediction, reference),
        "chrf": sentence_chrf(prediction, reference),
    }


def corpus_scores(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Corpus-level BLEU and chrF (n-gram counts pooled over all examples, as papers report them)."""
    import sacrebleu

    return {"bleu": sacrebleu.corpus_bleu(list(predictions), [list(references)]).score,
            "chrf": sacrebleu.corpus_chrf(list(predictions), [list(references)]).score}


# ---------------------------------------------------------------- error categories

def repetition_share(text: str, n: int = REPETITION_NGRAM) -> float:
    """Share of words lying inside a word n-gram that occurs at least twice in the text.

    A model stuck in a loop repeats whole phrases, so almost every word is covered; ordinary prose
    rarely repeats four words in a row.

    >>> repetition_share("go to bed go to bed go to bed", n=3)
    1.0
    >>> repetition_share("one two three four five six", n=3)
    0.0
    """
    tokens = text.split()
    if len(tokens) <= n:
        return 0.0
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    counts = Counter(grams)
    covered = set()
    for i, gram in enumerate(grams):
        if counts[gram] > 1:
            covered.update(range(i, i + n))
    return len(covered) / len(tokens)


def is_repetitive(text: str) -> bool:
    """True when more than REPETITION_THRESHOLD of the words sit in repeated word 4-grams."""
    return repetition_share(text) > REPETITION_THRESHOLD


def error_flags(text: str, finish_reason: str) -> dict[str, bool]:
    """Which error categories one answer falls into (several can hold at once).

    >>> error_flags("", "stop")
    {'empty': True, 'length': False, 'repetitive': False}
    """
    return {"empty": not text.strip(), "length": finish_reason == "length", "repetitive": is_repetitive(text)}


# ---------------------------------------------------------------- aggregation

def bootstrap_interval(values: Sequence[float], samples: int = 1000, seed: int = 0,
                       confidence: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean: resample the examples with replacement `samples` times.

    Deterministic for a given seed. With no resamples or fewer than two values the interval is the mean itself.

    >>> bootstrap_interval([1.0, 1.0, 1.0])
    (1.0, 1.0)
    """
    import numpy as np

    data = np.asarray(values, dtype=float)
    if data.size == 0:
        return (math.nan, math.nan)
    if data.size < 2 or samples == 0:
        return (float(data.mean()), float(data.mean()))
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(samples, data.size))].mean(axis=1)
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(means, [tail, 100 - tail])
    return (float(low), float(high))


def summarize_metrics(per_example: Sequence[dict[str, float]], samples: int = 1000,
                      seed: int = 0) -> dict[str, dict[str, float]]:
    """Macro average with a bootstrap 95% interval for each metric.

    >>> summarize_metrics([{"bleu": 10.0}, {"bleu": 30.0}], samples=0)
    {'bleu': {'mean': 20.0, 'low': 20.0, 'high': 20.0}}
    """
    names = list(per_example[0]) if per_example else []
    summary = {}
    for name in names:
        values = [row[name] for row in per_example]
        low, high = bootstrap_interval(values, samples, seed)
        summary[name] = {"mean": sum(values) / len(values), "low": low, "high": high}
    return summary


def error_shares(flags: Sequence[dict[str, bool]]) -> dict[str, float]:
    """Fraction (0-1) of answers in each error category.

    >>> error_shares([{"empty": True, "length": False, "repetitive": False},
    ...               {"empty": False, "length": False, "repetitive": False}])
    {'empty': 0.5, 'length': 0.0, 'repetitive': 0.0}
    """
    n = len(flags)
    return {name: (sum(f[name] for f in flags) / n if n else 0.0) for name in ERROR_CATEGORIES}
