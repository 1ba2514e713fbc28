import random
import re

import numpy as np
import pytest

from curation.matching import EntryMatcher
from curation.reference_metaclip import PUNCTS_TO_WRAP, ReferenceMatcher, reference_no_space
from curation.text import entry_key, is_no_space_char, normalize


def brute_force(entries, text):
    """Section 3 taken literally: every entry whose key is a substring of the normalized text."""
    normalized = normalize(text)
    return [i for i, entry in enumerate(entries) if entry_key(entry) in normalized]


def test_match_returns_sorted_ids_indexing_the_given_entries():
    entries = ["york", "new york", "city", "new"]
    assert EntryMatcher(entries).match("I love New York city, new york!") == [0, 1, 2, 3]
    assert EntryMatcher(entries).match("newyork") == []


def test_overlapping_occurrences_all_count():
    entries = ["new york", "york city", "new york city", "york"]
    assert EntryMatcher(entries).match("new york city") == [0, 1, 2, 3]


def test_whole_words_only_for_spaced_scripts():
    matcher = EntryMatcher(["cat", "at"])
    assert matcher.match("a category of bats") == []
    assert matcher.match("the cat sat") == [0]
    assert matcher.match("cat") == [0]


def test_matching_is_case_sensitive():
    matcher = EntryMatcher(["Apple", "apple"])
    assert matcher.match("Apple pie") == [0]
    assert matcher.match("apple pie") == [1]


def test_punctuated_entry_matches_punctuated_text():
    """Deliberate difference: the reference never matches entries containing , . ; : ? ! `."""
    matcher = EntryMatcher(["St. Louis", "Louis", "Missouri"])
    text = "Flights to St. Louis, Missouri"
    assert matcher.match(text) == [0, 1, 2]
    assert ReferenceMatcher(["St. Louis", "Louis", "Missouri"]).match(text) == [1, 2]


def test_punctuation_separates_words():
    matcher = EntryMatcher(["dog", "Hello world"])
    assert matcher.match("a dog. Another dog!") == [0]
    assert matcher.match("Hello, world") == []
    assert matcher.match("dog;cat") == [0]


def test_katakana_entry_matches_inside_unspaced_japanese():
    """Deliberate difference: kana are no-space characters, so the entry is not padded."""
    entries = ["エレラ", "ルイス", "東京", "タワー"]
    text = "ルイス・エレラが東京タワーを見た"
    assert EntryMatcher(entries).match(text) == [0, 1, 2, 3]
    assert ReferenceMatcher(entries).match(text) == [2]


def test_hiragana_and_cjk_symbols_are_no_space():
    entries = ["ねこ", "「猫」"]
    assert EntryMatcher(entries).match("かわいいねこと「猫」の写真") == [0, 1]


def test_thai_entry_matches_inside_unspaced_thai():
    assert EntryMatcher(["แมว"]).match("รูปแมวสีดำ") == [0]


def test_mixed_script_entry_is_padded_only_on_its_spaced_side():
    matcher = EntryMatcher(["iPhone手机"])
    assert matcher.match("新款 iPhone手机壳") == [0]
    assert matcher.match("新款xiPhone手机壳") == []


@pytest.mark.parametrize("gap", ["  ", "\u00a0", "\t", "\n", "\u3000", " \u2009 \r\n"])
def test_whitespace_run_does_not_break_a_bigram(gap):
    """Deliberate difference: the reference only maps tab/newline/CR and keeps runs."""
    entries = ["new york"]
    text = f"view of new{gap}york at night"
    assert EntryMatcher(entries).match(text) == [0]
    if gap in ("  ", "\u00a0", "\u3000", " \u2009 \r\n"):
        assert ReferenceMatcher(entries).match(text) == []


def test_entries_sharing_a_key_each_get_their_id():
    matcher = EntryMatcher(["cat", " cat ", "dog", "cat\n"])
    assert matcher.match("a cat") == [0, 1, 3]
    assert matcher.match("a dog") == [2]
    assert len(matcher) == 4


def test_pure_punctuation_and_long_entries_still_match_when_given():
    long_entry = " ".join(["word"] * 60)
    matcher = EntryMatcher(["?", long_entry])
    assert matcher.match("what?") == [0]
    assert matcher.match(long_entry + " and more") == [1]


def test_empty_entry_is_a_clear_error():
    with pytest.raises(ValueError, match="empty after normalization"):
        EntryMatcher(["cat", "   "])


def test_no_entries_matches_nothing():
    assert EntryMatcher([]).match("anything") == []
    assert EntryMatcher([]).match_many(["a", "b"]) == [[], []]


def test_match_many_equals_match(cc3m_captions, wordnet_lemmas):
    matcher = EntryMatcher(wordnet_lemmas)
    texts = cc3m_captions[:500] + ["", " ", "\u3000"]
    assert matcher.match_many(texts) == [matcher.match(t) for t in texts]
    assert matcher.match_many(iter(texts[:10])) == [matcher.match(t) for t in texts[:10]]


def test_matches_equal_the_literal_definition_on_real_captions(cc3m_captions, wordnet_lemmas):
    rng = random.Random(7)
    entries = rng.sample(wordnet_lemmas, 3000) + ["St. Louis", "U.S.", "a", "the", "of the"]
    matcher = EntryMatcher(entries)
    texts = rng.sample(cc3m_captions, 300)
    results = matcher.match_many(texts)
    assert results == [brute_force(entries, t) for t in texts]
    assert sum(map(len, results)) > 300, "the sample should produce many matches"


def test_matches_equal_the_literal_definition_in_every_wit_language(wit_captions):
    rng = random.Random(11)
    for lang, captions in wit_captions.items():
        entries = sorted(caption_ngrams(captions, lang))
        entries = rng.sample(entries, min(2000, len(entries)))
        matcher = EntryMatcher(entries)
        texts = rng.sample(captions, min(200, len(captions)))
        results = matcher.match_many(texts)
        assert results == [brute_force(entries, t) for t in texts], lang
        assert any(results), f"{lang}: no caption matched"


# --- parity with the MetaCLIP 2 reference rules, where they are not defective ----------------

NO_SPACE_LANGS = {"ja"}


def caption_ngrams(captions, lang):
    """Entries taken from the captions themselves: words and word bigrams, or CJK n-grams."""
    grams = set()
    for caption in captions:
        if lang in NO_SPACE_LANGS:
            for run in re.findall(r"[\u4e00-\u9fff]+", caption):
                grams.update(run[i : i + n] for n in (1, 2, 3) for i in range(len(run) - n + 1))
            grams.update(re.findall(r"[\u30a0-\u30ff]{2,}", caption))
        else:
            words = caption.split()
            grams.update(words)
            grams.update(f"{a} {b}" for a, b in zip(words, words[1:]))
    return {g for g in grams if g.strip()}


def reference_is_sound_for_entry(entry):
    return (
        not any(p in entry for p in PUNCTS_TO_WRAP)
        and entry == " ".join(entry.split())
        and all(reference_no_space(ch) == is_no_space_char(ch) for ch in (entry[0], entry[-1]))
    )


def reference_is_sound_for_text(text):
    return not re.search(r"[^\S ]|  ", text) and not any(p in text for p in "`")


def parity_case(entries, texts):
    entries = sorted(e for e in entries if reference_is_sound_for_entry(e))
    texts = [t for t in texts if reference_is_sound_for_text(t)]
    ours = EntryMatcher(entries).match_many(texts)
    reference = ReferenceMatcher(entries)
    return ours, [reference.match(t) for t in texts]


def test_parity_with_reference_on_cc3m_and_wordnet(cc3m_captions, wordnet_lemmas):
    ours, reference = parity_case(wordnet_lemmas, cc3m_captions[:3000])
    assert len(ours) > 2500
    assert sum(map(len, ours)) > 20000
    assert ours == reference


@pytest.mark.parametrize("lang", ["ar", "bg", "da", "el", "en", "et", "id", "ja", "ko", "tr", "vi"])
def test_parity_with_reference_on_wit(wit_captions, lang):
    captions = wit_captions[lang]
    ours, reference = parity_case(caption_ngrams(captions, lang), captions)
    assert len(ours) > 100
    assert sum(map(len, ours)) > len(ours)
    assert ours == reference


TRICKY_ENTRIES = [
    "new",
    "new york",
    "new york city",
    "york",
    "city",
    "St. Louis",
    "U.S.",
    "Mr.",
    "C++",
    "東京",
    "タワー",
    "ねこ",
    "แมว",
    "😀",
    "a b c d e",
    "b c",
    "?",
    "cat",
    " cat ",
    "x\u00a0y",
]
TRICKY_TEXTS = [
    "",
    " ",
    "\t\n",
    "new new york city york",
    "new\u00a0york\u3000city",
    "U.S. and Mr. Smith",
    "C++11 in St.Louis, St. Louis!",
    "東京タワーとねこ",
    "รูปแมว",
    "smile 😀😀",
    "a b c d e f",
    "a b c d",
    "why?!",
    "cat\x1ccat",
    "x y",
    "x\u2003y",
    "lone \ud800 surrogate new york",
    "\u3000new york\u3000",
    "...",
    "new york city" * 3,
    "new york, city",
    "`new` york",
]


def test_batch_path_equals_single_path_and_definition_on_tricky_texts(monkeypatch):
    import curation.matching as matching

    matcher = EntryMatcher(TRICKY_ENTRIES)
    expected = [brute_force(TRICKY_ENTRIES, t) for t in TRICKY_TEXTS]
    assert [matcher.match(t) for t in TRICKY_TEXTS] == expected
    assert matcher.match_many(TRICKY_TEXTS) == expected
    monkeypatch.setattr(matching, "BATCH_TEXTS", 5)
    assert matcher.match_many(TRICKY_TEXTS) == expected
    assert sum(map(len, expected)) > 30


def test_match_arrow_returns_int32_lists_and_handles_nulls():
    import pyarrow as pa

    matcher = EntryMatcher(TRICKY_ENTRIES)
    valid = [t for t in TRICKY_TEXTS if "\ud800" not in t]  # Arrow strings are valid UTF-8
    texts = pa.chunked_array([valid[:5], [None, *valid[5:]]])
    result = matcher.match_arrow(texts)
    assert result.type == pa.list_(pa.int32())
    expected = [brute_force(TRICKY_ENTRIES, t or "") for t in texts.to_pylist()]
    assert result.to_pylist() == expected


def test_entries_that_are_prefixes_of_each_other_in_the_token_trie():
    entries = ["a", "a a", "a a a", "a b", "b"]
    matcher = EntryMatcher(entries)
    texts = ["a a a a", "a b a", "b a", "a"]
    assert matcher.match_many(texts) == [brute_force(entries, t) for t in texts]


def test_match_many_restores_the_garbage_collector_state():
    import gc

    matcher = EntryMatcher(["cat"])
    assert gc.isenabled()
    assert matcher.match_many(["a cat"]) == [[0]]
    assert gc.isenabled()
    gc.disable()
    try:
        matcher.match_many(["a cat"])
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_the_automaton_skips_texts_without_an_anchor_and_misses_nothing(cc3m_captions, monkeypatch):
    """Only texts that hold an anchor (one character of each substring key) are scanned by the
    automaton; the matches equal the literal definition whether the texts it scans are gathered
    (few hold an anchor) or not (most do)."""
    import curation.matching as matching

    entries = ["'s gravenhage", ".22 caliber", "a.d.", "o'clock", "new york", "東\ufffd"]
    matcher = EntryMatcher(entries)
    anchors = {chr(c) for c in np.flatnonzero(matcher._anchors)}
    assert anchors >= {"'", "."} and not anchors & set("acdeghiklnorsvw")  # letters come last
    texts = [*cc3m_captions[:300], "it is five o'clock", "a .22 caliber rifle", "in 100 a.d.",
             "東\ud800 x", "new york"]  # fmt: skip
    # a lone surrogate is scanned as U+FFFD (brute_force knows nothing of that): 東\ufffd's anchor
    expected = [brute_force(entries, t) for t in texts[:-2]] + [[5], [4]]
    assert matcher.match(texts[-2]) == [5]
    assert matcher._anchors[0xD800] and matcher._anchors[0xFFFD]
    scanned = []
    real_find_all = matching._find_all

    def spy(automaton, text):
        scanned.append(text)
        return real_find_all(automaton, text)

    monkeypatch.setattr(matching, "_find_all", spy)
    for gather_below in (0.75, 0.0):  # gathered, then scanned whole
        monkeypatch.setattr(matching, "GATHER_BELOW", gather_below)
        scanned.clear()
        assert matcher.match_many(texts) == expected
        assert expected[-5] == [3] and expected[-4] == [1]
        length = sum(len(normalize(t)) for t in texts)
        if gather_below:
            assert 0 < len(scanned[0]) < length / 2
        else:
            assert len(scanned[0]) == length


def test_match_arrow_decodes_the_utf8_buffers_like_python():
    """match_arrow reads code points from the Arrow buffers: every string layout (sliced,
    chunked, large, view, with nulls) gives match_many's answers on the same texts; bytes that
    are not UTF-8 (Parquet readers do not check) are an error, as they were for to_pylist."""
    import pyarrow as pa

    matcher = EntryMatcher(TRICKY_ENTRIES)
    texts = [t for t in TRICKY_TEXTS if "\ud800" not in t] + ["", "é ñ 😀 東京", None]
    expected = matcher.match_many([t or "" for t in texts])
    plain = pa.array(texts, pa.string())
    layouts = [
        plain,
        pa.chunked_array([plain[:3], plain[3:]]),
        plain.cast(pa.large_string()),
        plain.cast(pa.string_view()),
        pa.array([None, "x", *texts])[2:],
    ]
    for layout in layouts:
        assert matcher.match_arrow(layout).to_pylist() == expected, layout.type
    assert matcher.match_arrow(plain[:0]).to_pylist() == []

    raw = b"new york \xff\xe2\x82" + " city é".encode() + b"\xed\xa0\x80"
    broken = pa.Array.from_buffers(
        pa.string(), 1, [None, pa.py_buffer(np.array([0, len(raw)], np.int32)), pa.py_buffer(raw)]
    )
    with pytest.raises(ValueError, match=r"alt-text 0 of a batch is not valid UTF-8: b'new york"):
        matcher.match_arrow(broken)
    from curation import _match_kernel as kernel

    offsets = np.array([0, 3, len(raw) + 3], np.int64)
    chars, char_offsets, first_bad = kernel.decode_utf8(
        np.frombuffer(b"abc" + raw, np.uint8), offsets, np.empty(0, np.bool_)
    )
    assert "".join(map(chr, chars)) == "abcnew york \ufffd\ufffd\ufffd city é\ufffd\ufffd\ufffd"
    assert char_offsets.tolist() == [0, 3, len(chars)] and first_bad == 1
