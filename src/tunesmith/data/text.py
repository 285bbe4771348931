"""Text rules every stage shares: words of any script, and the percentile of lengths.

`words` is the one tokenizer behind ROUGE-L, token F1 and every near-duplicate check.

Scripts written without spaces between words (Chinese, Japanese kana and kanji, Thai, Lao, Khmer, Myanmar) are
compared character by character, so a nearly right Chinese answer shares most of its tokens with the
reference instead of being one long "word" that matches nothing. Everything else is split into runs of
letters and digits (`_` and punctuation separate words), lower-cased. On ASCII text this is exactly the
tokenizer rouge-score uses by default.
"""

from __future__ import annotations

import re

UNSPACED_SCRIPTS = (
    "\u0e00-\u0e7f"  # Thai
    "\u0e80-\u0eff"  # Lao
    "\u1000-\u109f"  # Myanmar
    "\u1780-\u17ff"  # Khmer
    "\u3040-\u309f"  # Hiragana
    "\u30a0-\u30ff"  # Katakana
    "\u3400-\u4dbf"  # CJK extension A
    "\u4e00-\u9fff"  # CJK unified ideographs
    "\uf900-\ufaff"  # CJK compatibility ideographs
    "\U00020000-\U0002fa1f"  # CJK extensions B-F and compatibility supplement
)
"""Unicode ranges of scripts that do not put spaces between words: each character is a token."""

_TOKEN = re.compile(rf"[{UNSPACED_SCRIPTS}]|(?:(?![{UNSPACED_SCRIPTS}])[^\W_])+")


def words(text: str) -> list[str]:
    """Lower-cased word tokens; one token per character in scripts written without spaces.

    >>> words("The Wren_kettle holds 1.7 litres!")
    ['the', 'wren', 'kettle', 'holds', '1', '7', 'litres']
    >>> words("水壶容量1.7升")
    ['水', '壶', '容', '量', '1', '7', '升']
    """
    return _TOKEN.findall(text.lower())


class WordTokenizer:
    """`words` in the shape rouge-score's scorers take (`tokenizer=WordTokenizer()`)."""

    def tokenize(self, text: str) -> list[str]:
        return words(text)


def percentile(values, q: float) -> int:
    """Nearest-rank percentile: the smallest value with at least q% (0-100) of the values at or below it; 0 for none.

    Token lengths are summarized with it (`data inspect`) and `max_length: auto` is its p99, so both agree.

    >>> percentile([4, 1, 3, 2], 50), percentile(range(1, 101), 99), percentile([], 90)
    (2, 99, 0)
    """
    ordered = sorted(values)
    if not ordered:
        return 0
    rank = max(1, -(-len(ordered) * q // 100))
    return int(ordered[int(rank) - 1])
