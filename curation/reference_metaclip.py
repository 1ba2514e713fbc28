"""The MetaCLIP 2 reference release's matching and threshold rules, for parity tests and benchmarks.

These reproduce the reference behaviour listed under "Deliberate differences" in
docs/semantics.md, defects included; tests compare against them only where the rules are not
defective.
"""

from __future__ import annotations

import numpy as np

PUNCTS_TO_WRAP = [",", ".", ";", ":", "?", "!", "`"]
CHARS_TO_SPACE = ["\t", "\n", "\r"]

# The reference's no-space characters: CJK ideographs and the South-East Asian scripts, without
# kana, CJK symbols or punctuation.
REFERENCE_NO_SPACE_RANGES = (
    (0x4E00, 0x9FFF),
    (0x3400, 0x4DBF),
    (0x20000, 0x2EBEF),
    (0xF900, 0xFAFF),
    (0x2E80, 0x2FFF),
    (0x0E00, 0x0E7F),
    (0x0E80, 0x0EFF),
    (0x1000, 0x109F),
    (0x1780, 0x17FF),
    (0x0F00, 0x0FFF),
)


def spacing(text: str) -> str:
    spaced = f" {text} "
    for punct in PUNCTS_TO_WRAP:
        spaced = spaced.replace(punct, f" {punct} ")
    for char in CHARS_TO_SPACE:
        spaced = spaced.replace(char, " ")
    return spaced


def reference_no_space(ch: str) -> bool:
    cp = ord(ch)
    return any(lo <= cp <= hi for lo, hi in REFERENCE_NO_SPACE_RANGES)


def spaced_entry(entry: str) -> str:
    left = "" if reference_no_space(entry[0]) else " "
    right = "" if reference_no_space(entry[-1]) else " "
    return f"{left}{entry}{right}"


class ReferenceMatcher:
    """pyahocorasick over the spaced entries, iterating matches in Python as the release does."""

    def __init__(self, entries):
        import ahocorasick

        self.automaton = ahocorasick.Automaton()
        for entry_id, entry in enumerate(entries):
            self.automaton.add_word(spaced_entry(entry), entry_id)
        self.automaton.make_automaton()

    def match(self, text: str) -> list[int]:
        matched = set()
        for _end, entry_id in self.automaton.iter(spacing(text)):
            matched.add(entry_id)
        return sorted(matched)


def p_to_t(counts, p: float) -> int:
    """The reference threshold search: zeros included, so it can return 0."""
    counts = np.sort(np.asarray(counts))
    cumulative = np.cumsum(counts) / counts.sum()
    return int(counts[np.argmin(np.abs(cumulative - p))])
