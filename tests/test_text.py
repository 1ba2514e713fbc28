import sys

import pytest

from curation.text import (
    MAX_ENTRY_CHARS,
    entry_drop_reason,
    entry_key,
    is_no_space_char,
    normalize,
    normalize_core,
)


@pytest.mark.parametrize(
    "space", ["\t", "\n", "\r", "\x0b", "\x0c", "\u00a0", "\u2003", "\u2009", "\u3000", "\u2028"]
)
def test_rule1_every_unicode_whitespace_becomes_a_space(space):
    assert normalize(f"red{space}car") == " red car "


def test_rule1_covers_the_whole_unicode_range():
    spaces = [chr(cp) for cp in range(sys.maxunicode + 1) if chr(cp).isspace()]
    for ch in spaces:
        assert normalize(f"a{ch}b") == " a b ", hex(ord(ch))
    assert normalize("a\u200bb") == " a\u200bb ", "zero-width space is not isspace()"


@pytest.mark.parametrize("punct", list(",.;:?!`"))
def test_rule2_spaced_punctuation(punct):
    assert normalize(f"x{punct}y") == f" x {punct} y "
    assert normalize_core(f"x{punct}") == f"x {punct}"


@pytest.mark.parametrize("other", list("'\"-()/&#+%"))
def test_rule2_other_punctuation_is_left_alone(other):
    assert normalize(f"x{other}y") == f" x{other}y "


def test_rule3_collapses_runs_and_rule4_strips_and_pads():
    assert normalize("  a \t\n  b\u3000\u00a0c   ") == " a b c "
    assert normalize("end.") == " end . "
    assert normalize("...") == " . . . "
    assert normalize("") == "  "
    assert normalize(" \t ") == "  "


def test_no_case_folding_and_no_unicode_normalization():
    assert normalize("Cat") != normalize("cat")
    nfc, nfd = "caf\u00e9", "cafe\u0301"
    assert normalize(nfc) == f" {nfc} "
    assert normalize(nfd) == f" {nfd} "


def test_entry_keys_pad_spaced_scripts_on_both_sides():
    assert entry_key("cat") == " cat "
    assert entry_key("  new\u00a0york ") == " new york "
    assert entry_key("St. Louis") == " St . Louis "


def test_entry_keys_do_not_pad_next_to_no_space_characters():
    assert entry_key("東京") == "東京"
    assert entry_key("ルイス") == "ルイス"
    assert entry_key("ひらがな") == "ひらがな"
    assert entry_key("ภาษาไทย") == "ภาษาไทย"
    assert entry_key("C++") == " C++"
    assert entry_key("(band)") == "(band)"
    assert entry_key("Mr.") == " Mr ."
    assert entry_key("「東京」タワー") == "「東京」タワー"
    assert entry_key("iPhone手机") == " iPhone手机"
    assert entry_key("東京 Tower") == "東京 Tower "


NO_SPACE_RANGES = [
    (0x4E00, 0x9FFF),
    (0x3400, 0x4DBF),
    (0x20000, 0x2EBEF),
    (0xF900, 0xFAFF),
    (0x2E80, 0x2FFF),
    (0x3000, 0x303F),
    (0x3040, 0x309F),
    (0x30A0, 0x30FF),
    (0x31F0, 0x31FF),
    (0xFF65, 0xFF9F),
    (0x0E00, 0x0E7F),
    (0x0E80, 0x0EFF),
    (0x1000, 0x109F),
    (0x1780, 0x17FF),
    (0x0F00, 0x0FFF),
]


@pytest.mark.parametrize("lo,hi", NO_SPACE_RANGES)
def test_no_space_ranges_are_inclusive(lo, hi):
    assert is_no_space_char(chr(lo)) and is_no_space_char(chr(hi))
    assert is_no_space_char(chr((lo + hi) // 2))


def test_characters_outside_the_ranges_are_spaced():
    for ch in ["a", "Ω", "я", "ع", "한", "ᄀ", "\u0dff", "\u10a0", "\u1800", "\uff64", "\uffa0"]:
        assert not is_no_space_char(ch), ch


def test_punctuation_is_no_space():
    import string

    for ch in string.punctuation + "，。、；：？！“”‘’（）【】《》〈〉「」『』～—":
        assert is_no_space_char(ch), ch


def test_entry_key_rejects_entries_empty_after_normalization():
    with pytest.raises(ValueError, match="empty after normalization"):
        entry_key(" \t\u3000")


def test_metadata_drop_reasons():
    assert entry_drop_reason("") == "empty"
    assert entry_drop_reason("\n\u00a0") == "empty"
    assert entry_drop_reason("...") == "pure_punctuation"
    assert entry_drop_reason("「」") == "pure_punctuation"
    assert entry_drop_reason("¿¡") == "pure_punctuation"
    assert entry_drop_reason("x" * MAX_ENTRY_CHARS) is None
    assert entry_drop_reason("x" * (MAX_ENTRY_CHARS + 1)) == "too_long"
    assert entry_drop_reason("St. Louis") is None
    assert entry_drop_reason("C++") is None
