"""Text normalization shared by alt-text and metadata entries (docs/semantics.md, sections 1-2)."""

from __future__ import annotations

import string
import unicodedata

MAX_ENTRY_CHARS = 256

# Punctuation that gets one space on each side, so "St. Louis," and "St. Louis" share tokens.
SPACED_PUNCTUATION = ",.;:?!`"
_SPACED_PUNCTUATION_SET = frozenset(SPACED_PUNCTUATION)

_NO_SPACE_RANGES = (
    (0x4E00, 0x9FFF),  # CJK unified ideographs
    (0x3400, 0x4DBF),  # CJK extension A
    (0x20000, 0x2EBEF),  # CJK extensions B-F
    (0xF900, 0xFAFF),  # CJK compatibility ideographs
    (0x2E80, 0x2FFF),  # CJK radicals, Kangxi radicals, ideographic description
    (0x3000, 0x303F),  # CJK symbols and punctuation
    (0x3040, 0x309F),  # Hiragana
    (0x30A0, 0x30FF),  # Katakana
    (0x31F0, 0x31FF),  # Katakana phonetic extensions
    (0xFF65, 0xFF9F),  # half-width Katakana
    (0x0E00, 0x0E7F),  # Thai
    (0x0E80, 0x0EFF),  # Lao
    (0x1000, 0x109F),  # Myanmar
    (0x1780, 0x17FF),  # Khmer
    (0x0F00, 0x0FFF),  # Tibetan
)
FULL_WIDTH_PUNCTUATION = "，。、；：？！“”‘’（）【】《》〈〉「」『』～—"
_NO_SPACE_PUNCTUATION = frozenset(string.punctuation + FULL_WIDTH_PUNCTUATION)


def space_punctuation(text: str) -> str:
    """Rule 2. (Rules 1 and 3 come from str.split(), which splits on every str.isspace() run.)"""
    if _SPACED_PUNCTUATION_SET.isdisjoint(text):
        return text
    for punct in SPACED_PUNCTUATION:
        text = text.replace(punct, f" {punct} ")
    return text


def normalize_core(text: str) -> str:
    """Rules 1-4 without the outer padding: the normalized form of a metadata entry."""
    return " ".join(space_punctuation(text).split())


def normalize(text: str) -> str:
    """Normalized alt-text: rules 1-4, with one space on each side."""
    return f" {normalize_core(text)} "


def _bmp_no_space_table() -> bytes:
    table = bytearray(0x10000)
    for lo, hi in _NO_SPACE_RANGES:
        if lo < 0x10000:
            table[lo : hi + 1] = b"\x01" * (hi + 1 - lo)
    for ch in _NO_SPACE_PUNCTUATION:
        table[ord(ch)] = 1
    return bytes(table)


_BMP_NO_SPACE = _bmp_no_space_table()


def is_no_space_char(ch: str) -> bool:
    """True for characters that are written without spaces around them (or punctuation)."""
    cp = ord(ch)
    if cp < 0x10000:
        return _BMP_NO_SPACE[cp] == 1
    return any(lo <= cp <= hi for lo, hi in _NO_SPACE_RANGES)


def entry_key(entry: str) -> str:
    """The substring searched for in normalized alt-text (section 2).

    Raises ValueError for an entry that is empty after normalization: it could never match.
    """
    core = normalize_core(entry)
    if not core:
        raise ValueError(f"entry {entry!r} is empty after normalization")
    left = "" if is_no_space_char(core[0]) else " "
    right = "" if is_no_space_char(core[-1]) else " "
    return f"{left}{core}{right}"


def _is_punctuation(ch: str) -> bool:
    return ch in _NO_SPACE_PUNCTUATION or unicodedata.category(ch).startswith("P")


def is_pure_punctuation(entry: str) -> bool:
    core = normalize_core(entry).replace(" ", "")
    return bool(core) and all(_is_punctuation(ch) for ch in core)


def entry_drop_reason(entry: str) -> str | None:
    """Why the metadata build drops an entry (section 2), or None when it is kept."""
    core = normalize_core(entry)
    if not core:
        return "empty"
    if is_pure_punctuation(core):
        return "pure_punctuation"
    if len(core) > MAX_ENTRY_CHARS:
        return "too_long"
    return None
