"""jobs/build_metadata.py on Spark: hand-counted fixtures, stats, reruns, determinism."""

from __future__ import annotations

import bz2
import lzma
import os
import subprocess
import sys

import pyarrow.dataset as ds
import pytest
from conftest import PROJECT_ROOT, shared_path
from metadata_fixtures import AF_PAGES, EN_LEMMAS, HEADER, af_dump_bytes, page, write_wordnet

from curation.metadata import entries as metadata
from curation.metadata.segment import segmenter_name
from jobs import build_metadata

# af fixture with these flags: unigrams top 50% of 7 -> 4 (cat, dog, then Beta, alpha by code
# point), bigrams count >= 2 and PMI > 3 -> "cat dog" (PMI 3*11/(3*3) = 3.67), titles top 50% of
# 3 by in-links -> Beta (2), Alpha (1).
FIXTURE_FLAGS = [
    "--unigram-fraction", "0.5",
    "--bigram-min-count", "2",
    "--bigram-min-pmi", "3",
    "--title-fraction", "0.5",
    "--shuffle-partitions", "3",
]  # fmt: skip


def read_table(path):
    table = ds.dataset(str(path), format="parquet", partitioning="hive").to_table()
    return sorted(table.to_pylist(), key=lambda r: (r["lang"], r.get("entry_id", 0), r["source"]))


@pytest.fixture(scope="module")
def fixture_inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("metadata_inputs")
    (root / "dumps").mkdir()
    (root / "dumps" / "afwiki-20240101-pages-articles.xml.xz").write_bytes(
        lzma.compress(af_dump_bytes())
    )
    ja_page = page("東京", "東京タワー。東京タワー。猫。犬。鳥。魚")
    ja = HEADER.format(lang="ja") + ja_page + "</mediawiki>"
    (root / "dumps" / "jawiki-20240101-pages-articles.xml.xz").write_bytes(
        lzma.compress(ja.encode("utf-8"))
    )
    write_wordnet(root / "wordnet", EN_LEMMAS)
    (root / "omw").mkdir()
    (root / "omw" / "wn-data-als.tab").write_text(
        "# als\thttp://example\tCC BY\n02084071-n\tlemma\tqen\n02084071-n\tals:lemma\tqen_i_madh\n"
        "02084071-n\tals:def\tnjë kafshë\n"
    )
    (root / "omw" / "wn-data-qqq.tab").write_text("01-n\tlemma\tunknown\n")
    (root / "pageviews-20240101-000000").write_text(
        "af Delta 40 0\naf.m Delta 5 0\naf Alpha 10 0\naf.b Beta 1000 0\nen Dog 5 0\n"
    )
    (root / "pageviews-202401-user").write_text(  # monthly per-article format
        "af.wikipedia Beta 7 desktop 60 A60\naf.wiktionary Alpha 9 desktop 900 A900\n"
    )
    return root


@pytest.fixture(scope="module")
def fixture_build(spark, fixture_inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("metadata_out")
    argv = [
        "--languages", "en,af,sq,ja",
        "--wordnet", str(fixture_inputs / "wordnet"),
        "--omw", str(fixture_inputs / "omw" / "wn-data-*.tab"),
        "--wikipedia-dumps", f"file://{fixture_inputs}/dumps/*wiki-*.xml.xz",
        "--no-wordfreq",
        "--output", f"file://{out}",
        *FIXTURE_FLAGS,
    ]  # fmt: skip
    assert build_metadata.main(argv) == 0
    return out


def test_entries_per_source_hand_counted(fixture_build):
    rows = read_table(fixture_build / "metadata")
    af = [(r["entry_id"], r["entry"], r["source"]) for r in rows if r["lang"] == "af"]
    assert af == [
        (0, "Alpha", "title:inlinks"),
        (1, "Beta", "title:inlinks"),
        (2, "alpha", "unigram"),
        (3, "cat", "unigram"),
        (4, "cat dog", "bigram"),
        (5, "dog", "unigram"),
    ]
    en = [(r["entry_id"], r["entry"], r["source"]) for r in rows if r["lang"] == "en"]
    # code-point order: U+FF5A (ｚ) before U+20000 (𠀀); UTF-16 order would swap them
    assert en == [
        (0, "dog", "wordnet"),
        (1, "hot dog", "wordnet"),
        (2, "ｚebra", "wordnet"),
        (3, "𠀀beast", "wordnet"),
    ]
    # OMW "als" is Tosk Albanian -> sq; the unknown wn-data-qqq.tab is skipped with a warning
    sq = [(r["entry_id"], r["entry"], r["source"]) for r in rows if r["lang"] == "sq"]
    assert sq == [(0, "qen", "wordnet:omw"), (1, "qen i madh", "wordnet:omw")]
    assert {r["lang"] for r in rows} == {"af", "en", "sq", "ja"}
    schema = ds.dataset(str(fixture_build / "metadata"), partitioning="hive").schema
    assert {f.name: str(f.type) for f in schema} == {
        "entry_id": "int32", "entry": "string", "source": "string", "lang": "string"
    }  # fmt: skip


def test_no_space_language_segmented_and_bigrams_joined_without_space(fixture_build):
    if segmenter_name("ja", no_space=True) != "mecab":
        pytest.skip("fugashi/unidic-lite not installed: ja falls back to characters")
    # MeCab: [東京 タワー] [東京 タワー] [猫] [犬] [鳥] [魚]: N = 8; unigrams top 50% of 6 -> 東京,
    # タワー (2 each), then 犬 (lowest code point of the count-1 words); bigram 東京タワー, PMI 4.
    ja = [(r["entry_id"], r["entry"], r["source"]) for r in read_table(fixture_build / "metadata")
          if r["lang"] == "ja"]  # fmt: skip
    assert ja == [
        (0, "タワー", "unigram"),
        (1, "東京", "title:inlinks"),
        (2, "東京タワー", "bigram"),
        (3, "犬", "unigram"),
    ]


def test_stats_count_candidates_kept_and_drop_reasons(fixture_build):
    stats = {(r["lang"], r["source"]): r for r in read_table(fixture_build / "metadata_stats")}
    assert set(stats) == {("af", "title:inlinks"), ("af", "unigram"), ("af", "bigram"),
                          ("en", "wordnet"), ("sq", "wordnet:omw"), ("ja", "title:inlinks"),
                          ("ja", "unigram"), ("ja", "bigram")}  # fmt: skip
    unigram = stats["af", "unigram"]
    assert (unigram["candidates"], unigram["kept"], unigram["dropped_duplicate"]) == (4, 3, 1)
    en = stats["en", "wordnet"]
    assert (en["candidates"], en["kept"]) == (6, 4)
    dropped = (en["dropped_pure_punctuation"], en["dropped_too_long"], en["dropped_empty"])
    assert dropped == (1, 1, 0)


def test_rerun_overwrites_only_rebuilt_languages(spark, fixture_build, fixture_inputs, tmp_path):
    en_dir = fixture_build / "metadata" / "lang=en"
    en_before = {p.name: p.read_bytes() for p in en_dir.iterdir()}
    en_rows = [r for r in read_table(fixture_build / "metadata") if r["lang"] == "en"]
    argv = [
        "--languages", "af",
        "--wikipedia-dumps", str(fixture_inputs / "dumps" / "afwiki-*.xml.xz"),
        "--pageviews", str(fixture_inputs / "pageviews-*"),
        "--no-wordfreq",
        "--output", str(fixture_build),
        *FIXTURE_FLAGS,
    ]  # fmt: skip
    assert build_metadata.main(argv) == 0
    rows = read_table(fixture_build / "metadata")
    af = [r for r in rows if r["lang"] == "af"]
    titles = [(r["entry"], r["source"]) for r in af if r["source"].startswith("title")]
    # pageviews: Beta 60 (monthly file), Delta 45 (desktop + mobile), Alpha 10; the wikibooks
    # and wiktionary rows are not Wikipedia's
    assert titles == [("Beta", "title"), ("Delta", "title")]
    assert {p.name: p.read_bytes() for p in en_dir.iterdir()} == en_before
    assert [r for r in rows if r["lang"] == "en"] == en_rows
    af_stats = [r for r in read_table(fixture_build / "metadata_stats") if r["lang"] == "af"]
    assert {r["source"] for r in af_stats} == {"title", "unigram", "bigram"}


def test_cli_errors_are_one_line():
    result = subprocess.run(
        [sys.executable, "jobs/build_metadata.py", "--languages", "xx", "--output", "/tmp/none"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "build_metadata: error: unknown Wikipedia language codes: xx"


def test_ids_identical_across_partitions_and_hash_seeds(spark, tmp_path, wordnet_lemmas):
    """Run A in this session: one dump file, 5 shuffle partitions. Run B in a separate process
    (as spark-submit would): the same pages split over two dump files, 1 shuffle partition,
    another PYTHONHASHSEED. Real WordNet sample (147k lemmas) and wordfreq (de) in both."""
    one = tmp_path / "one"
    one.mkdir()
    (one / "afwiki-20240101-pages-articles.xml.xz").write_bytes(lzma.compress(af_dump_bytes()))
    two = tmp_path / "two"
    two.mkdir()
    (two / "afwiki-20240101-pages-articles1.xml.bz2").write_bytes(
        bz2.compress(af_dump_bytes(AF_PAGES[:2], b"</mediawiki>"))
    )
    (two / "afwiki-20240101-pages-articles2.xml").write_bytes(af_dump_bytes(AF_PAGES[2:]))
    common = [
        "--languages", "en,af,de",
        "--wordnet", str(shared_path("wordnet")),
        "--unigram-max", "2000",
        *FIXTURE_FLAGS[:-2],
    ]  # fmt: skip
    argv_a = [*common, "--wikipedia-dumps", f"{one}/*.xml*", "--output", str(tmp_path / "a")]
    assert build_metadata.main([*argv_a, "--shuffle-partitions", "5"]) == 0
    env = dict(os.environ, PYTHONHASHSEED="12345", PYSPARK_PYTHON=sys.executable)
    subprocess.run(
        [sys.executable, "jobs/build_metadata.py", *common, "--wikipedia-dumps", f"{two}/*.xml*",
         "--output", str(tmp_path / "b"), "--shuffle-partitions", "1", "--master", "local[2]"],
        cwd=PROJECT_ROOT, env=env, check=True, capture_output=True,
    )  # fmt: skip
    a = read_table(tmp_path / "a" / "metadata")
    b = read_table(tmp_path / "b" / "metadata")
    assert a == b
    by_lang = {}
    for row in a:
        by_lang.setdefault(row["lang"], []).append(row)
    assert len(by_lang["af"]) == 6
    # Spark == the single-process reference build (WordNet, then wordfreq unigrams)
    selection = metadata.Selection(unigram_max=2000)
    for lang in ("en", "de"):
        candidates = [("wordnet", lemma) for lemma in wordnet_lemmas if lang == "en"]
        candidates += [("unigram:wordfreq", w) for w in metadata.wordfreq_unigrams(lang, selection)]
        expected, _ = metadata.select_entries(candidates)
        got = [(r["entry_id"], r["entry"], r["source"]) for r in by_lang[lang]]
        assert got == expected, lang


def test_plan_max_languages_prefers_wordnet_and_dumps(spark, fixture_inputs):
    from curation.metadata.job import BuildConfig, _plan

    config = BuildConfig(
        output="unused",
        languages=["fr", "el", "de", "af", "en"],
        no_space=frozenset(),
        wordnet=str(fixture_inputs / "wordnet"),
        dumps=[str(fixture_inputs / "dumps" / "*.xml.xz")],
        max_languages=3,
    )
    langs, wordnet_langs, _, dumps, wordfreq_langs, _, skipped = _plan(spark, config, print)
    # en (WordNet) and af (dump) first, then the wordfreq languages by code: de
    assert langs == ["af", "de", "en"] and wordnet_langs == ["en"]
    assert [lang for _, lang in dumps] == ["af"] and wordfreq_langs == ["de", "en"]
    assert skipped == ["el", "fr"]
