"""Filters deciding which generated items are kept: length, tasks a text model cannot do, and duplicates.

Near-duplicates are found by ROUGE-L F1, as self-instruct does, on the words of `tunesmith.data.text`: the same
tokenizer evaluation scores with, which also sees words in scripts written without spaces.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Iterable

from tunesmith.config import SelfInstructConfig
from tunesmith.data.text import UNSPACED_SCRIPTS, WordTokenizer, words
from tunesmith.datagen.parsing import Task


class RougeFilter:
    """Near-duplicate check: ROUGE-L F1 of a new text against every kept one, as self-instruct filters.

    >>> f = RougeFilter(0.7); f.add("Give three tips for staying healthy.")
    >>> f.is_near_duplicate("Give three tips for staying very healthy."), f.is_near_duplicate("Sort 3, 1, 2.")
    (True, False)
    """

    def __init__(self, threshold: float):
        from rouge_score import rouge_scorer

        self.threshold = threshold
        self._tokenizer = WordTokenizer()
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


def normalized(text: str) -> str:
    """The form exact-duplicate checks compare: lower case, single spaces.

    >>> normalized("  Name  THREE colours. ")
    'name three colours.'
    """
    return " ".join(text.lower().split())


class DuplicateFilter:
    """Exact (normalized) and near (ROUGE-L) duplicate checks against every text kept so far.

    Both generators keep a text only when it is neither, and then remember it, so later ones are checked
    against it too.

    >>> f = DuplicateFilter(0.7, ["Name three colours."])
    >>> f.is_duplicate("name THREE colours."), f.is_similar("Name three bright colours."), f.is_similar("Add 2 and 3.")
    (True, True, False)
    """

    def __init__(self, threshold: float, kept: Iterable[str] = ()):
        self._seen: set[str] = set()
        self._similar = RougeFilter(threshold)
        for text in kept:
            self.add(text)

    def add(self, text: str) -> None:
        self._seen.add(normalized(text))
        self._similar.add(text)

    def is_duplicate(self, text: str) -> bool:
        return normalized(text) in self._seen

    def is_similar(self, text: str) -> bool:
        return self._similar.is_near_duplicate(text)


UNSUPPORTED_WORDS = re.compile(
    r"\b(images?|pictures?|photos?|photographs?|graphs?|charts?|diagrams?|flowcharts?|draw|drawing|plot|"
    r"maps?|files?|videos?|audio|music|songs?|listen|go to|browse|website)\b", re.IGNORECASE)
"""Instructions about things a text-only model cannot see, make or do (Alpaca's blacklist idea)."""


_UNSPACED = re.compile(f"[{UNSPACED_SCRIPTS}]")


def count_words(text: str) -> int:
    """Words of an instruction, as the length limits count them: whitespace-separated, except in scripts written
    without spaces, where each character counts (one Chinese sentence is not one "word").

    >>> count_words("List three prime numbers."), count_words("请列出三种方法。"), count_words("Sort 3, 1, 2.")
    (4, 7, 4)
    """
    return len(words(text)) if _UNSPACED.search(text) else len(text.split())


def instruction_problem(task: Task, options: SelfInstructConfig) -> str | None:
    """Why a generated task is not kept by the cheap filters (`too_short`, `too_long`, `unsupported`), or None.

    >>> instruction_problem(Task("Draw a map of Europe.", "", "..."), SelfInstructConfig())
    'unsupported'
    """
    count = count_words(task.instruction)
    if count < options.min_instruction_words:
        return "too_short"
    if count > options.max_instruction_words:
        return "too_long"
    if UNSUPPORTED_WORDS.search(task.instruction):
        return "unsupported"
    return None
