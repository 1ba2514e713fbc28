"""Metadata sources and selection rules, without Spark: readers, tokenizers, reference build."""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import lzma

import pytest
from conftest import PROJECT_ROOT, shared_path
from metadata_fixtures import EN_LEMMAS, af_dump_bytes, write_wordnet

from curation.metadata import entries as metadata
from curation.metadata import wikipedia, wordnet
from curation.metadata.segment import character_segments, segmenter_name, whitespace_segments


def test_wordnet_index_files_plain_and_gz(tmp_path):
    write_wordnet(tmp_path / "gz", EN_LEMMAS)
    write_wordnet(tmp_path / "plain", EN_LEMMAS, gz=False)
    expected = sorted(EN_LEMMAS)
    assert wordnet.princeton_lemmas(str(tmp_path / "gz")) == expected
    assert wordnet.princeton_lemmas(str(tmp_path / "plain")) == expected
    with pytest.raises(FileNotFoundError, match="no WordNet"):
        wordnet.princeton_lemmas(str(tmp_path / "missing"))


def test_wordnet_data_files_keep_case_and_drop_adjective_markers(tmp_path):
    (tmp_path / "data.noun").write_text(
        "  1 license header\n"
        "11081883 18 n 02 Albert_Einstein 0 Einstein 0 001 @i 10000000 n 0000 | physicist\n"
    )
    (tmp_path / "data.adj").write_text("00001740 00 a 01 galore(ip) 0 000 | abundant\n")
    (tmp_path / "index.noun").write_text("albert_einstein n 1 1 @ 1 0 11081883\n")
    assert wordnet.princeton_lemmas(str(tmp_path)) == ["Albert Einstein", "Einstein", "galore"]


def test_wordnet_sample_matches_fixture(wordnet_lemmas):
    assert wordnet.princeton_lemmas(str(shared_path("wordnet"))) == wordnet_lemmas
    assert len(wordnet_lemmas) > 140_000


def test_omw_tab_files_and_iso_table():
    lines = [
        "# eng-wn\thttp://example\tCC BY",
        "02084071-n\tlemma\tchien",
        "02084071-n\tfra:lemma\tchien_de_garde",
        "02084071-n\tfra:def\tun animal",
    ]
    assert wordnet.omw_lemmas(lines) == ["chien", "chien de garde"]
    assert wordnet.omw_file_language("s3://b/omw/wn-data-als.tab") == "als"
    table = wordnet.load_omw_table()
    assert table["als"] == "sq"  # Tosk Albanian; Wikipedia's "als" is Alemannic
    assert table["nob"] == "no" and table["cmn"] == "zh" and table["arb"] == "ar"
    known = set((PROJECT_ROOT / "schemas" / "wikipedia_languages.txt").read_text().split())
    with (PROJECT_ROOT / "schemas" / "omw_iso639_3.csv").open() as f:
        assert {row["wiki_code"] for row in csv.DictReader(f)} <= known


def _pages(data: bytes):
    warnings = []
    pages = list(wikipedia.iter_pages(io.BytesIO(data), warnings.append, "fixture"))
    return pages, warnings


def test_truncated_dump_yields_complete_pages_and_a_warning():
    pages, warnings = _pages(af_dump_bytes())
    assert [p.title for p in pages] == ["Alpha", "Beta", "Gamma", "Talk:Foo", "Delta"]
    assert [p.ns for p in pages] == [0, 0, 0, 1, 0]
    assert [p.redirect for p in pages] == [False, False, True, False, False]
    assert len(warnings) == 1 and "after 5 complete pages" in warnings[0]


@pytest.mark.parametrize("compress", [bz2.compress, lzma.compress, gzip.compress])
def test_dump_cut_mid_compressed_stream(tmp_path, compress):
    whole = compress(af_dump_bytes())
    cut = whole[: len(whole) * 3 // 4]
    suffix = {bz2.compress: "bz2", lzma.compress: "xz", gzip.compress: "gz"}[compress]
    path = tmp_path / f"afwiki-latest-pages-articles.xml.{suffix}"
    path.write_bytes(cut)
    warnings = []
    with wikipedia.open_decompressed(str(path)) as stream:
        pages = list(wikipedia.iter_pages(stream, warnings.append, str(path)))
    assert len(warnings) == 1 and "dump ends early" in warnings[0]
    assert [p.title for p in pages] == ["Alpha", "Beta", "Gamma", "Talk:Foo", "Delta"][: len(pages)]


def test_real_truncated_sample_dump():
    path = shared_path("wikipedia", "elwiki-truncated-100k.xml.xz")
    warnings = []
    with wikipedia.open_decompressed(str(path)) as stream:
        pages = list(wikipedia.iter_pages(stream, warnings.append, "el"))
    assert len(pages) == 933 and len(warnings) == 1
    assert pages[-1].title and all(p.title for p in pages)


def test_count_dump_hand_counted(tmp_path):
    path = tmp_path / "afwiki-20240101-pages-articles.xml.xz"
    path.write_bytes(lzma.compress(af_dump_bytes()))
    rows = list(wikipedia.count_dump(str(path), "whitespace"))
    by_kind: dict[str, dict] = {}
    for kind, k1, k2, count in rows:
        by_kind.setdefault(kind, {})[(k1, k2) if kind == "b" else k1] = count
    assert by_kind["u"] == {
        "Beta": 1, "cat": 3, "dog": 3, "fish": 1, "the": 1, "alpha": 1, "bird": 1
    }  # fmt: skip
    assert by_kind["b"] == {
        ("Beta", "cat"): 1, ("cat", "dog"): 3, ("dog", "fish"): 1, ("dog", "the"): 1,
        ("the", "alpha"): 1,
    }  # fmt: skip
    assert by_kind["t"] == {"Alpha": 1, "Beta": 1, "Delta": 1}
    assert by_kind["l"] == {"Beta": 2, "Alpha": 1}
    assert by_kind["n"] == {"": 11} and by_kind["p"] == {"": 4}
    assert len(by_kind["w"]) == 1


def test_parse_page_drops_file_category_and_interwiki_links():
    text = (
        "Η [[Κύπρος|Κύπρος]] {{Infobox|a=[[Αθήνα]]}} [[Αρχείο:x.jpg|μικρογραφία|Ένα [[νησί]]]]"
        " νησί.[[Κατηγορία:Νησιά]] [[en:Cyprus]] [[Foo (bar)#x|y]] [[image:y.png]]"
    )
    parsed = wikipedia.parse_page(text, {"αρχείο", "κατηγορία"})
    assert parsed.plain.split() == ["Η", "Κύπρος", "νησί.", "y"]
    assert parsed.links == ["Κύπρος", "Αθήνα", "Νησί", "Foo (bar)"]


def test_dump_language_from_file_name():
    assert wikipedia.dump_language("s3://b/elwiki-20240101-pages-articles1.xml.bz2") == "el"
    assert wikipedia.dump_language("zh_yuewiki-latest-pages-articles.xml") == "zh_yue"
    assert wikipedia.dump_language("be_x_oldwiki-latest-pages-articles.xml.bz2") == "be_tarask"
    assert wikipedia.dump_language("/d/notes.txt") is None


def test_segmenters():
    text = "Hello, world. «Foo» bar-baz (x) 3.5"
    expected = [["Hello"], ["world"], ["Foo"], ["bar-baz"], ["x"], ["3.5"]]
    assert list(whitespace_segments(text)) == expected
    assert list(character_segments("ภาษา ไทย。ก")) == [["ภ", "า", "ษ", "า"], ["ไ", "ท", "ย"], ["ก"]]
    assert segmenter_name("el", no_space=False) == "whitespace"
    assert segmenter_name("th", no_space=True) == "characters"


def test_japanese_segmenter_when_installed():
    pytest.importorskip("fugashi")
    from curation.metadata.segment import SEGMENTERS

    if segmenter_name("ja", no_space=True) != "mecab":
        pytest.skip("fugashi has no dictionary here")
    assert list(SEGMENTERS["mecab"]("東京タワーの夜景。")) == [["東京", "タワー", "の", "夜景"]]


def test_keep_count_and_top_ranked():
    assert metadata.keep_count(7, 0.5, None) == 4
    assert metadata.keep_count(10, 0.1, None) == 1
    assert metadata.keep_count(1_000_000, 0.76, 61_235) == 61_235
    assert metadata.keep_count(0, 0.1, 5) == 0
    scores = {"b": 3, "a": 3, "𠀀": 1, "ｚ": 1, "c": 2}
    assert metadata.top_ranked(scores, 1.0, None) == ["a", "b", "c", "ｚ", "𠀀"]
    assert metadata.top_ranked(scores, 0.5, 2) == ["a", "b"]


def test_reference_build_precedence_drops_and_code_point_ids():
    candidates = [
        ("unigram", "dog"),
        ("wordnet", "dog"),
        ("title:inlinks", "St. Louis"),
        ("unigram", "St . Louis"),  # same entry after normalization
        ("wordnet", "𠀀beast"),
        ("wordnet", "ｚebra"),
        ("bigram", "!!"),
        ("bigram", " "),
        ("bigram", "y" * 257),
        ("unigram", "dog"),  # repeated candidate counts once
    ]
    rows, stats = metadata.select_entries(candidates)
    assert rows == [
        (0, "St . Louis", "title:inlinks"),
        (1, "dog", "wordnet"),
        (2, "ｚebra", "wordnet"),
        (3, "𠀀beast", "wordnet"),
    ]
    assert stats["unigram"] == {
        "candidates": 2, "kept": 0, "empty": 0, "pure_punctuation": 0, "too_long": 0,
        "duplicate": 2,
    }  # fmt: skip
    assert stats["bigram"]["pure_punctuation"] == 1
    assert stats["bigram"]["empty"] == 1 and stats["bigram"]["too_long"] == 1


def test_wordfreq_stand_in():
    entries = metadata.wordfreq_unigrams("el", metadata.Selection(unigram_max=50))
    assert len(entries) == 50 and "και" in entries
    assert metadata.wordfreq_unigrams("tl", metadata.Selection(unigram_max=5))  # wordfreq "fil"
    assert metadata.wordfreq_unigrams("ab", metadata.METACLIP2) == []
    assert len(metadata.wordfreq_languages()) >= 40
    # MetaCLIP 1 (count >= 100) on wordfreq: frequency >= 100 per 1e9 tokens
    import wordfreq

    freq = wordfreq.get_frequency_dict("en", wordlist="best")
    metaclip1 = metadata.wordfreq_unigrams("en", metadata.METACLIP1)
    assert len(metaclip1) == sum(1 for f in freq.values() if f >= 1e-7)
    every = metadata.wordfreq_unigrams("en", metadata.Selection(1.0, None))
    assert len(every) > len(metaclip1)


def test_recipes():
    assert metadata.METACLIP2.unigram_max == 251_465 and metadata.METACLIP2.bigram_max == 100_646
    assert metadata.METACLIP2.title_fraction == 0.76 and metadata.METACLIP2.title_max == 61_235
    assert metadata.recipe("metaclip1").unigram_min_count == 100
    assert metadata.recipe("metaclip2", bigram_max=7).bigram_max == 7
