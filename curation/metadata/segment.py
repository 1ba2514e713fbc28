"""Word segmentation for unigram/bigram counting, per language.

- Whitespace languages: split on whitespace, strip punctuation and symbols from word edges; a
  word that had punctuation at an edge ends (or starts) a segment, and bigrams never cross a
  segment boundary.
- Japanese (`ja`): MeCab via `fugashi` with the `unidic-lite` dictionary.
- Chinese (`zh`, `zh_classical`, `zh_yue`, `wuu`, `gan`): `jieba`.
- Every other no-space language (Thai, Lao, Khmer, Myanmar, Tibetan, ...), and ja/zh when their
  segmenter is not installed: characters. A unigram is one character, a bigram two adjacent
  characters of the same run; bigrams of no-space languages are joined without a space.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Iterator
from functools import cache

Segmenter = Callable[[str], Iterator[list[str]]]
JIEBA_LANGUAGES = frozenset({"zh", "zh_classical", "zh_yue", "wuu", "gan"})


def _is_separator(ch: str) -> bool:
    return unicodedata.category(ch)[0] in "PSZC"


def whitespace_segments(text: str) -> Iterator[list[str]]:
    segment: list[str] = []
    for raw in text.split():
        start, end = 0, len(raw)
        while start < end and _is_separator(raw[start]):
            start += 1
        while end > start and _is_separator(raw[end - 1]):
            end -= 1
        if start > 0 and segment:
            yield segment
            segment = []
        if start < end:
            segment.append(raw[start:end])
        if end < len(raw) and segment:
            yield segment
            segment = []
    if segment:
        yield segment


def character_segments(text: str) -> Iterator[list[str]]:
    segment: list[str] = []
    for ch in text:
        if ch.isspace() or _is_separator(ch):
            if segment:
                yield segment
                segment = []
        else:
            segment.append(ch)
    if segment:
        yield segment


def _word_segments(words: Iterator[str]) -> Iterator[list[str]]:
    segment: list[str] = []
    for word in words:
        word = word.strip()
        if not word or all(_is_separator(ch) for ch in word):
            if segment:
                yield segment
                segment = []
        else:
            segment.append(word)
    if segment:
        yield segment


@cache
def _mecab():
    import fugashi

    return fugashi.Tagger()


def mecab_segments(text: str) -> Iterator[list[str]]:
    tagger = _mecab()
    for line in text.splitlines():
        yield from _word_segments(word.surface for word in tagger(line))


@cache
def _jieba():
    import logging

    import jieba

    jieba.setLogLevel(logging.WARNING)
    return jieba


def jieba_segments(text: str) -> Iterator[list[str]]:
    jieba = _jieba()
    for line in text.splitlines():
        yield from _word_segments(jieba.cut(line))


def _available(module: str) -> bool:
    try:
        if module == "fugashi":
            _mecab()
        elif module == "jieba":
            _jieba()
        else:
            __import__(module)
    except Exception:  # not installed, or installed without a dictionary
        return False
    return True


def segmenter_name(lang: str, no_space: bool) -> str:
    """Which segmentation a language gets here: whitespace, mecab, jieba or characters."""
    if not no_space:
        return "whitespace"
    if lang == "ja" and _available("fugashi"):
        return "mecab"
    if lang in JIEBA_LANGUAGES and _available("jieba"):
        return "jieba"
    return "characters"


SEGMENTERS: dict[str, Segmenter] = {
    "whitespace": whitespace_segments,
    "mecab": mecab_segments,
    "jieba": jieba_segments,
    "characters": character_segments,
}
