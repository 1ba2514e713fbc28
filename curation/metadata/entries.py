"""Metadata selection rules (MetaCLIP 2 defaults, MetaCLIP 1 for English) and entry ids.

Sources, in precedence order: WordNet, Wikipedia titles, unigrams, bigrams. A source value may
carry a flag after a colon: `wordnet:omw` (Open Multilingual Wordnet), `title:inlinks` (titles
ranked by in-link count because no pageview file was given), `unigram:wordfreq` (the `wordfreq`
word list standing in for a dump's unigram counts).

Bigram PMI is the ratio P(a b) / (P(a) P(b)) = count(a b) * N / (count(a) * count(b)), N the
number of tokens of the language; MetaCLIP's threshold of 30 is on this (not logarithmic) scale.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from curation.text import entry_drop_reason, normalize_core

SOURCES = ("wordnet", "title", "unigram", "bigram")
DROP_REASONS = ("empty", "pure_punctuation", "too_long", "duplicate")
# wordfreq gives frequencies, not counts: a minimum count applies as count per 1e9 tokens (about
# the size of a large Wikipedia), so MetaCLIP 1's "seen >= 100 times" keeps frequencies >= 1e-7.
WORDFREQ_TOKENS = 1e9
# wordfreq codes that differ from the Wikipedia code of the same language
WORDFREQ_CODES = {"tl": "fil", "no": "nb"}


def source_rank(source: str) -> int:
    """Precedence of a source value (`title:inlinks` ranks as `title`)."""
    return SOURCES.index(source.split(":", 1)[0])


@dataclass(frozen=True)
class Selection:
    """How many candidates each source keeps. A fraction applies to the distinct candidates."""

    unigram_fraction: float = 0.10
    unigram_max: int | None = 251_465
    unigram_min_count: int = 1
    bigram_min_pmi: float = 30.0
    bigram_min_count: int = 5
    bigram_max: int | None = 100_646
    title_fraction: float = 0.76
    title_max: int | None = 61_235
    title_min_popularity: int = 0


METACLIP2 = Selection()
# MetaCLIP 1 (English): unigrams seen >= 100 times, bigrams with PMI >= 30, titles >= 70 views.
METACLIP1 = Selection(
    unigram_fraction=1.0,
    unigram_max=None,
    unigram_min_count=100,
    bigram_min_pmi=30.0,
    bigram_min_count=1,
    bigram_max=None,
    title_fraction=1.0,
    title_max=None,
    title_min_popularity=70,
)
RECIPES = {"metaclip2": METACLIP2, "metaclip1": METACLIP1}


def recipe(name: str, **overrides) -> Selection:
    return replace(RECIPES[name], **{k: v for k, v in overrides.items() if v is not None})


def keep_count(candidates: int, fraction: float, maximum: int | None) -> int:
    """How many of `candidates` ranked items a top-fraction rule keeps (rounded up)."""
    kept = min(candidates, math.ceil(candidates * fraction - 1e-9))
    return kept if maximum is None else min(kept, maximum)


def top_ranked(scores: dict[str, float], fraction: float, maximum: int | None) -> list[str]:
    """Highest scores first, ties in code-point order of the key; the top-fraction rule."""
    ranked = sorted(scores, key=lambda key: (-scores[key], key))
    return ranked[: keep_count(len(ranked), fraction, maximum)]


def wordfreq_unigrams(lang: str, selection: Selection) -> list[str]:
    """The wordfreq stand-in: its word list for `lang`, ranked by frequency, top fraction."""
    import wordfreq

    code = WORDFREQ_CODES.get(lang, lang)
    if code not in wordfreq.available_languages(wordlist="best"):
        return []
    frequencies = wordfreq.get_frequency_dict(code, wordlist="best")
    floor = selection.unigram_min_count / WORDFREQ_TOKENS
    frequencies = {word: f for word, f in frequencies.items() if f >= floor}
    return top_ranked(frequencies, selection.unigram_fraction, selection.unigram_max)


def wordfreq_languages() -> list[str]:
    """Wikipedia codes of the languages wordfreq has a word list for."""
    import wordfreq

    reverse = {v: k for k, v in WORDFREQ_CODES.items()}
    return sorted(reverse.get(code, code) for code in wordfreq.available_languages("best"))


def annotate(raw: str) -> tuple[str, str | None]:
    """(normalized entry, drop reason or None) of one candidate."""
    return normalize_core(raw), entry_drop_reason(raw)


def assign_ids(entries) -> dict[str, int]:
    """Section 9: the rank of each distinct entry in code-point order (Python str ordering)."""
    return {entry: i for i, entry in enumerate(sorted(set(entries)))}


def select_entries(candidates: list[tuple[str, str]]) -> tuple[list[tuple[int, str, str]], dict]:
    """Single-process reference of the build for one language.

    `candidates` are (source, raw) pairs. Returns rows (entry_id, entry, source) in id order and
    stats {source: {"candidates", "kept", <reason>...}}; the Spark build must agree with it.
    """
    stats: dict[str, dict[str, int]] = {}
    first: dict[str, tuple[int, str, str]] = {}
    annotated = []
    for source, raw in dict.fromkeys(candidates):
        entry, reason = annotate(raw)
        counts = stats.setdefault(source, dict.fromkeys(("candidates", "kept", *DROP_REASONS), 0))
        counts["candidates"] += 1
        if reason:
            counts[reason] += 1
            continue
        annotated.append((entry, source, raw))
        key = (source_rank(source), raw, source)
        if entry not in first or key < first[entry]:
            first[entry] = key
    for entry, source, raw in annotated:
        if first[entry] == (source_rank(source), raw, source):
            stats[source]["kept"] += 1
        else:
            stats[source]["duplicate"] += 1
    ids = assign_ids(first)
    rows = [(ids[entry], entry, first[entry][2]) for entry in sorted(first)]
    return rows, stats
