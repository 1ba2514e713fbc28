"""The curation job end to end on real captions, against a single-process recomputation."""

import hashlib
import json
import logging
import shutil
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.balance import (
    Record,
    entry_probabilities,
    sample_records,
    tail_fraction,
    threshold_for_fraction,
)
from curation.curate.job import CurateConfig, CurationError, run
from curation.identity import image_uid
from curation.matching import EntryMatcher
from tests.conftest import WIT_LANGUAGES
from tests.curation_fixtures import caption_rows, wit_entries, write_metadata

T_EN = 40


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, wordnet_lemmas, wit_captions):
    """Metadata (WordNet for en, caption n-grams elsewhere) and alt_text of real captions."""
    root = tmp_path_factory.mktemp("curate")
    rows = caption_rows(4000, WIT_LANGUAGES)
    rows += rows[:50]  # exact duplicates count once
    rows.append(("https://example.org/a.jpg", None, "a cat in a hat", "zz"))  # no metadata language
    rows.append(("ftp://example.org/a.jpg", None, "a cat", "en"))  # not an http(s) image
    table = pa.table(
        {
            "url": [r[0] for r in rows],
            "page_url": [r[1] for r in rows],
            "text": [r[2] for r in rows],
            "lang": [r[3] for r in rows],
        }
    )
    table = table.append_column(
        "uid", pa.array([uid_or_none(r[0], r[1]) for r in rows], pa.string())
    )
    pq.write_table(table, root / "alt_text.parquet")
    entries = {"en": [e for e in wordnet_lemmas if len(e) > 1]}
    for lang in WIT_LANGUAGES:
        if lang != "en":
            entries[lang] = wit_entries(wit_captions[lang], lang)
    entries = write_metadata(root / "metadata", entries)
    return root, table, entries


def uid_or_none(url, page_url):
    try:
        return image_uid(url, page_url)
    except ValueError:
        return None


def reference_records(table, entries):
    """Distinct (uid, text) records of an input table, in one process: a null lang is
    identified by LID (rule 4.1); the copies of a record give it their smallest lang (rule
    5.4), url and page_url; a lang without metadata is routed to `other` (rule 4.3).
    {(uid, text): (lang, url, page_url)}."""
    from curation.alt_text.lid import get_identifier

    copies = defaultdict(list)
    for row in table.to_pylist():
        if row["uid"] is None or row["url"] is None or row["text"] is None:
            continue
        if row["lang"] is None:
            row = {**row, "lang": get_identifier(None).predict([row["text"]])[2][0]}
        copies[(row["uid"], row["text"])].append(row)

    def smallest(rows, column):
        values = [r[column] for r in rows if r[column] is not None]
        return min(values) if values else None

    records = {}
    for key, rows in copies.items():
        lang = smallest(rows, "lang")
        routed = lang if lang in entries else "other"
        records[key] = (routed, smallest(rows, "url"), smallest(rows, "page_url"))
    return records


def reference_run(table, entries, t_en, seed):
    """The same job in one process, straight from the library."""
    records = reference_records(table, entries)
    by_lang = defaultdict(list)
    for (uid, text), (lang, _, _) in sorted(records.items()):
        if lang != "other":
            by_lang[lang].append((uid, text))
    counts, matched = {}, []
    for lang, items in by_lang.items():
        matcher = EntryMatcher(entries[lang])
        ids = matcher.match_many(text for _, text in items)
        counts[lang] = np.zeros(len(entries[lang]), dtype=np.int64)
        for (uid, text), found in zip(items, ids):
            counts[lang][found] += 1
            matched.append(Record(uid, text, lang, tuple(found)))
    p = tail_fraction(counts["en"], t_en)
    t = {
        lang: (t_en if lang == "en" else threshold_for_fraction(c, p))
        for lang, c in counts.items()
        if c.any()
    }
    probs = {lang: entry_probabilities(counts[lang], t[lang]) for lang in t}
    decisions = sample_records([r for r in matched if r.lang in t], probs, seed)
    return counts, t, p, decisions


def read(path):
    return pq.read_table(path).to_pandas()


def table_content(path, columns):
    """The rows of a table, sorted: equal content whatever the file layout."""
    df = read(path)[columns]
    if "entry_ids" in columns:
        df["entry_ids"] = df["entry_ids"].map(tuple)
    df["lang"] = df["lang"].astype(str)
    return sorted(map(tuple, df.values))


def curated_content(path):
    """The rows of a run's curated/ table, sorted."""
    return table_content(path / "curated", ["uid", "url", "text", "lang", "entry_ids", "keep_prob"])


def corpus_config(root, output, **flags) -> CurateConfig:
    """A run over the corpus fixture's metadata and alt_text (either may be overridden)."""
    flags = {
        "metadata": str(root / "metadata"),
        "input": str(root / "alt_text.parquet"),
        "t_en": T_EN,
        **flags,
    }
    return CurateConfig(output=str(output), **flags)


@pytest.fixture(scope="module")
def curated_run(spark, corpus):
    root, table, entries = corpus
    config = corpus_config(root, root / "out", seed=7, partitions=4)
    report = run(config, spark)
    return root / "out", report, reference_run(table, entries, T_EN, 7)


def test_counts_equal_a_single_process_recomputation(curated_run, corpus):
    out, report, (counts, t, p, decisions) = curated_run
    _, _, entries = corpus
    table = read(out / "entry_counts")
    assert set(table["lang"]) == set(counts)
    for lang, expected in counts.items():
        got = table[table["lang"] == lang].sort_values("entry_id")
        assert got["entry_id"].tolist() == list(range(len(entries[lang])))
        assert got["entry"].tolist() == entries[lang]
        assert np.array_equal(got["count"].to_numpy(), expected), lang
    assert sum(c.sum() for c in counts.values()) > 50_000


def test_thresholds_follow_the_tail_fraction_of_english(curated_run):
    out, report, (counts, t, p, decisions) = curated_run
    table = read(out / "thresholds").set_index("lang")
    assert table.loc["en", "t"] == T_EN
    for lang, expected in t.items():
        assert table.loc[lang, "t"] == expected, lang
        assert table.loc[lang, "tail_fraction"] == pytest.approx(p)
        assert table.loc[lang, "t"] >= 1
    assert table.loc["ja", "matched_records"] > 0


def test_curated_equals_the_reference_sampling(curated_run):
    out, report, (counts, t, p, decisions) = curated_run
    curated = read(out / "curated")
    got = {
        (r.uid, r.text, r.lang, tuple(r.entry_ids), round(r.keep_prob, 12))
        for r in curated.itertuples()
    }
    expected = {
        (d.record.uid, d.record.text, d.record.lang, d.record.entry_ids, round(d.keep_prob, 12))
        for d in decisions
        if d.kept
    }
    assert got == expected
    assert 0 < len(got) < len(decisions)
    assert curated["uid"].is_unique
    assert (out / "_SUCCESS").exists()
    run_json = json.loads((out / "run.json").read_text())
    assert run_json["counts"]["curated_records"] == len(got)
    assert run_json["drops"]["no_metadata_language"] == 1
    assert run_json["config"]["seed"] == 7


def test_tail_entries_keep_everything_and_head_entries_are_capped(curated_run):
    out, report, (counts, t, p, decisions) = curated_run
    curated = read(out / "curated")
    kept = Counter()
    for lang, ids in zip(curated["lang"], curated["entry_ids"]):
        kept.update((lang, int(i)) for i in ids)
    candidates = [d for d in decisions]
    head_checked = 0
    for d in candidates:
        c = counts[d.record.lang][list(d.record.entry_ids)]
        if (c < t[d.record.lang]).all():
            assert d.keep_prob == 1.0 and d.kept  # all-tail records are always kept
    # single-entry records isolate one entry's sampling: E[kept] = n * t / count <= t
    single = defaultdict(lambda: [0, 0])
    for d in candidates:
        if len(d.record.entry_ids) == 1:
            e = d.record.entry_ids[0]
            single[(d.record.lang, e)][0] += 1
            single[(d.record.lang, e)][1] += d.kept
    for (lang, e), (n, k) in single.items():
        count = counts[lang][e]
        if count >= t[lang] and n >= 20:
            expected = n * t[lang] / count
            assert k <= t[lang] + 4 * np.sqrt(t[lang]) + 1
            assert abs(k - expected) <= 4 * np.sqrt(expected) + 1, (lang, e, n, k, expected)
            head_checked += 1
    assert head_checked >= 3


def test_rerun_with_other_partitioning_gives_identical_curated_content(
    spark, corpus, curated_run, tmp_path
):
    root, table, entries = corpus
    out, _, _ = curated_run
    shuffled = table.take(np.random.default_rng(0).permutation(len(table)))
    (tmp_path / "shuffled").mkdir()
    for i, start in enumerate(range(0, len(shuffled), 3000)):
        pq.write_table(shuffled.slice(start, 3000), tmp_path / "shuffled" / f"part-{i}.parquet")
    previous = spark.conf.get("spark.sql.shuffle.partitions")
    spark.conf.set("spark.sql.shuffle.partitions", "1")
    try:
        config = corpus_config(root, tmp_path / "out", input=str(tmp_path / "shuffled"), seed=7)
        run(config, spark)
    finally:
        spark.conf.set("spark.sql.shuffle.partitions", previous)

    assert curated_content(tmp_path / "out") == curated_content(out)


def test_clear_errors(spark, corpus, tmp_path):
    root, table, entries = corpus
    base = dict(
        metadata=str(root / "metadata"),
        input=str(root / "alt_text.parquet"),
        output=str(tmp_path / "o"),
    )
    with pytest.raises(CurationError, match="has no language xx"):
        run(CurateConfig(**base, languages=("en", "xx")), spark)
    pq.write_table(pa.table({"link": ["x"], "text": ["y"]}), tmp_path / "bad.parquet")
    with pytest.raises(CurationError, match=r"lacks column\(s\) url"):
        run(CurateConfig(**{**base, "input": str(tmp_path / "bad.parquet")}), spark)
    empty = pa.table(
        {
            "url": pa.array([], pa.string()),
            "text": pa.array([], pa.string()),
            "lang": pa.array([], pa.string()),
        }
    )
    pq.write_table(empty, tmp_path / "empty.parquet")
    with pytest.raises(CurationError, match="has no records"):
        run(CurateConfig(**{**base, "input": str(tmp_path / "empty.parquet")}), spark)
    with pytest.raises(CurationError, match="input .*nowhere does not exist"):
        run(CurateConfig(**{**base, "input": str(tmp_path / "nowhere")}), spark)
    with pytest.raises(CurationError, match="metadata .*nowhere does not exist"):
        run(CurateConfig(**{**base, "metadata": str(tmp_path / "nowhere")}), spark)
    (tmp_path / "a_file").write_text("not a folder")
    with pytest.raises(CurationError, match="cannot write to output .*Parent path is not a dir"):
        run(CurateConfig(**{**base, "output": str(tmp_path / "a_file" / "out")}), spark)
    with pytest.raises(CurationError, match="--tail-fraction"):
        CurateConfig(**base, tail_fraction=1.5)


def test_hot_language_is_split_over_several_tasks(curated_run):
    out, _, _ = curated_run
    files = list((out / "matches" / "lang=en").glob("*.parquet"))
    assert len(files) >= 2, "English records should be salted over several partitions"


def test_resume_skips_unchanged_stages_and_reruns_from_the_changed_flag(spark, corpus, tmp_path):
    root, _, _ = corpus
    base = dict(languages=("da", "en"))
    out = tmp_path / "out"
    first = run(corpus_config(root, out, **base, seed=1), spark)
    assert all(isinstance(first.stages[s], float) for s in ("matches", "curated"))
    before = read(tmp_path / "out" / "curated")
    again = run(corpus_config(root, out, **base, seed=1, resume=True), spark)
    assert [again.stages[s] for s in ("matches", "entry_counts", "thresholds", "curated")] == [
        "skipped"
    ] * 4
    assert read(tmp_path / "out" / "curated").equals(before)
    assert again.counts == first.counts and again.drops == first.drops, "counts of the last run"
    reseeded = run(corpus_config(root, out, **base, seed=2, resume=True), spark)
    assert reseeded.stages["thresholds"] == "skipped"
    assert isinstance(reseeded.stages["curated"], float)
    assert set(read(tmp_path / "out" / "curated")["lang"].astype(str)) == {"da", "en"}


def test_failed_run_leaves_no_success_marker(spark, corpus, tmp_path):
    import shutil

    root, _, _ = corpus
    metadata = tmp_path / "metadata"
    shutil.copytree(root / "metadata", metadata)
    base = dict(metadata=str(metadata), languages=("da", "en"))
    run(corpus_config(root, tmp_path / "out", **base), spark)
    assert (tmp_path / "out" / "_SUCCESS").exists()
    for part in (metadata / "lang=da").glob("*.parquet"):
        part.write_bytes(b"not parquet at all")
    with pytest.raises(Exception, match=r"cannot read table partition .*lang=da: .*[Pp]arquet"):
        run(corpus_config(root, tmp_path / "out", **base, seed=3), spark)
    assert not (tmp_path / "out" / "_SUCCESS").exists()
    assert not (tmp_path / "out" / "run.json").exists()


def test_delta_output_is_a_real_delta_table(spark, corpus, tmp_path):
    from deltalake import DeltaTable

    root, _, _ = corpus
    out = tmp_path / "out"
    run(corpus_config(root, out, languages=("en", "ko"), format="delta"), spark)
    curated = DeltaTable(str(out / "curated"))
    assert curated.metadata().partition_columns == ["lang"]
    frame = curated.to_pyarrow_table().to_pandas()
    assert set(frame["lang"]) == {"en", "ko"} and frame["uid"].is_unique
    counts = DeltaTable(str(out / "entry_counts")).to_pyarrow_table()
    assert counts.num_rows > 100_000
    again = corpus_config(
        root, tmp_path / "again", input=str(out / "curated"), languages=("en", "ko"), format="delta"
    )
    rerun = run(again, spark)
    assert rerun.counts["input_records"] == len(frame), "a Delta table is also valid input"


def test_command_line_run_with_another_hash_seed(corpus, curated_run, tmp_path):
    """jobs/curate.py as a user runs it, in a fresh Spark with a different PYTHONHASHSEED."""
    import os
    import subprocess
    import sys

    root, _, _ = corpus
    out, _, _ = curated_run
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    cmd = [
        sys.executable,
        "jobs/curate.py",
        "--metadata",
        str(root / "metadata"),
        "--input",
        str(root / "alt_text.parquet"),
        "--output",
        str(tmp_path / "cli"),
        "--t-en",
        str(T_EN),
        "--seed",
        "7",
        "--master",
        "local[2]",
        "--partitions",
        "3",
    ]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "stage matches: done" in result.stderr and "curated" in result.stdout

    assert curated_content(tmp_path / "cli") == curated_content(out)

    bad = subprocess.run(
        [*cmd[:-4], "--languages", "en,xx"], env=env, capture_output=True, text=True, timeout=600
    )
    assert bad.returncode == 2
    errors = [line for line in bad.stderr.splitlines() if line.startswith("curate: error:")]
    assert errors == [f"curate: error: metadata {root / 'metadata'} has no language xx"]


def test_output_tables_follow_schemas_tables_json(spark, curated_run):
    import pyarrow.dataset as ds

    from curation.curate.job import TABLE_SCHEMAS
    from tests.conftest import PROJECT_ROOT

    out, _, _ = curated_run
    declared = json.loads((PROJECT_ROOT / "schemas" / "tables.json").read_text())["tables"]
    for name in ("matches", "entry_counts", "thresholds", "curated"):
        spec = declared[name]
        dataset = ds.dataset(
            out / name, format="parquet", partitioning="hive", ignore_prefixes=[".", "_"]
        )
        got = {f.name: str(f.type).replace("list<element: ", "list<") for f in dataset.schema}
        got.update({c: "string" for c in spec["partition_by"]})
        assert got == spec["columns"], name
        for column in spec["partition_by"]:
            assert any(p.name.startswith(f"{column}=") for p in (out / name).iterdir()), name
        # the job reads its own tables with TABLE_SCHEMAS instead of inferring: they must agree
        path = str(out / name)
        inferred = spark.read.option("basePath", path).parquet(path).schema
        stated = spark.read.schema(TABLE_SCHEMAS[name]).option("basePath", path).parquet(path)
        assert sorted(inferred.simpleString()[7:-1].split(",")) == sorted(
            stated.schema.simpleString()[7:-1].split(",")
        ), name


@pytest.fixture(scope="module")
def tangled_input(corpus, tmp_path_factory):
    """The corpus plus the copies de-duplication and the per-image choice must resolve: other
    texts for an image (often in another language), the same text labelled another language or
    none, the same image under another url and page; in shuffled files."""
    root, table, _ = corpus
    rows = [r for r in table.to_pylist() if r["uid"] is not None]
    rng = np.random.default_rng(3)
    extra = []
    for k, i in enumerate(rng.choice(len(rows), 800, replace=False)):
        row, other = rows[i], rows[rng.integers(len(rows))]
        extra.append(
            [
                {**row, "text": other["text"], "lang": other["lang"]},
                {**row, "lang": other["lang"]},
                {**row, "url": row["url"] + "?v=2", "page_url": "https://example.org/page"},
                {**row, "lang": None},
                {**row, "lang": "zz"},  # no metadata language, sorts after most labels
            ][k % 5]
        )
    tangled = pa.Table.from_pylist(rows + extra, schema=table.schema)
    tangled = tangled.take(rng.permutation(len(tangled)))
    folder = tmp_path_factory.mktemp("tangled")
    for i, start in enumerate(range(0, len(tangled), 1700)):
        pq.write_table(tangled.slice(start, 1700), folder / f"part-{i}.parquet")
    return folder


def test_tangled_copies_give_the_tables_of_the_reference(spark, corpus, tangled_input, tmp_path):
    """Input whose copies de-duplication and the per-image choice must resolve (other texts,
    other labels, other urls, in shuffled files): every table equals the one-process reference
    of the rules (`balance.sample_records` over `reference_records`)."""
    root, _, entries = corpus
    new = tmp_path / "run"
    flags = dict(input=str(tangled_input), seed=11, partitions=3)
    report = run(corpus_config(root, new, **flags), spark)
    assert report.counts["curated_records"] > 100
    table = pa.concat_tables(
        pq.read_table(path) for path in sorted(tangled_input.glob("*.parquet"))
    )
    records = reference_records(table, entries)
    counts, t, p, decisions = reference_run(table, entries, T_EN, 11)
    urls = {key: url for key, (_, url, _) in records.items()}
    expected_curated = sorted(
        (d.record.uid, urls[(d.record.uid, d.record.text)], d.record.text, d.record.lang,
         d.record.entry_ids, d.keep_prob)
        for d in decisions
        if d.kept
    )  # fmt: skip
    assert curated_content(new) == expected_curated
    expected_counts = sorted(
        (lang, entry_id, entries[lang][entry_id], int(c))
        for lang, values in counts.items()
        for entry_id, c in enumerate(values)
    )
    got_counts = table_content(new / "entry_counts", ["lang", "entry_id", "entry", "count"])
    assert got_counts == expected_counts
    thresholds = read(new / "thresholds").set_index("lang")
    assert sorted(thresholds.index) == sorted(t)
    for lang, value in t.items():
        assert thresholds.loc[lang, "t"] == value and thresholds.loc[lang, "tail_fraction"] == p
    matched_ids = {(d.record.uid, d.record.text): d.record.entry_ids for d in decisions}
    got_matches = table_content(
        new / "matches", ["uid", "url", "page_url", "text", "lang", "entry_ids"]
    )
    assert len(got_matches) == len(records)
    assert sorted((r[0], r[3]) for r in got_matches) == sorted(records)
    for uid, url, page_url, text, lang, ids in got_matches:
        assert (lang, url, page_url) == records[(uid, text)]
        if (uid, text) in matched_ids:
            assert ids == matched_ids[(uid, text)]
    run_counts = json.loads((new / "run.json").read_text())["counts"]
    assert run_counts["distinct_records"] == len(records)
    assert run_counts["curated_records"] == len(expected_curated)
    assert run_counts["matched_records"] == sum(1 for _, _, _, _, _, ids in got_matches if ids)

    # one chosen text per image with a match, and every curated row is a chosen one
    matches = read(new / "matches")
    matched = matches[matches["entry_ids"].map(len) > 0]
    chosen = matches[matches["chosen"]]
    assert sorted(chosen["uid"]) == sorted(set(matched["uid"]))
    assert matched["uid"].duplicated().sum() > 100, "the input must give images several texts"
    curated = read(new / "curated")
    assert set(zip(curated["uid"], curated["text"])) <= set(zip(chosen["uid"], chosen["text"]))


def output_tables(out):
    """Every table of a run, as sorted content, and its run.json counts."""
    tables = {
        "curated": curated_content(out),
        "entry_counts": table_content(out / "entry_counts", ["lang", "entry_id", "entry", "count"]),
        "matches": table_content(
            out / "matches", ["uid", "url", "page_url", "text", "lang", "entry_ids", "chosen"]
        ),
        "thresholds": table_content(out / "thresholds", ["lang", "t", "tail_fraction"]),
    }
    return tables, json.loads((out / "run.json").read_text())["counts"]


def test_spark_reader_gives_the_tables_of_the_pyarrow_reader(
    spark, corpus, tangled_input, tmp_path
):
    root, _, _ = corpus
    for reader in ("pyarrow", "spark"):
        flags = dict(input=str(tangled_input), seed=11, partitions=3, input_reader=reader)
        run(corpus_config(root, tmp_path / reader, **flags), spark)
    assert output_tables(tmp_path / "spark") == output_tables(tmp_path / "pyarrow")


def test_input_without_uid_and_lang_is_completed_alike_by_both_readers(spark, corpus, tmp_path):
    root, table, _ = corpus
    bare = table.select(["url", "page_url", "text"]).take(np.arange(0, table.num_rows, 5))
    pq.write_table(bare, tmp_path / "bare.parquet")
    for reader in ("pyarrow", "spark"):
        flags = dict(input=str(tmp_path / "bare.parquet"), partitions=2, input_reader=reader)
        report = run(corpus_config(root, tmp_path / reader, **flags), spark)
        pairs = zip(bare.column("url").to_pylist(), bare.column("page_url").to_pylist())
        assert report.drops["null_text_or_url"] == sum(uid_or_none(u, p) is None for u, p in pairs)
    assert output_tables(tmp_path / "spark") == output_tables(tmp_path / "pyarrow")
    matches = read(tmp_path / "pyarrow" / "matches")
    assert set(matches["lang"].astype(str)) >= {"en", "ko", "ja"}, "languages found by LID"
    assert all(uid == image_uid(u, p) for uid, u, p in matches[["uid", "url", "page_url"]].values)


def test_same_records_in_other_files_give_byte_identical_files(
    spark, corpus, tangled_input, tmp_path, monkeypatch
):
    """Not only the same rows: the same bytes, file by file, whatever the input files' order
    and cut (every order inside a file comes from uid hashes and the records themselves), and
    whichever way the records reach the reduce tasks: run c moves them through Spark's shuffle,
    a and b as files (--exchange auto on a local master), which are gone after the run."""
    root, _, _ = corpus
    rows = ds_table(tangled_input)
    reordered = tmp_path / "reordered"
    reordered.mkdir()
    rows = rows.take(np.random.default_rng(5).permutation(rows.num_rows))
    for i, start in enumerate(range(0, rows.num_rows, 2900)):
        pq.write_table(rows.slice(start, 2900), reordered / f"other-{i}.parquet")
    outputs = []
    local_dir = tmp_path / "spark_local"
    local_dir.mkdir()
    monkeypatch.setenv("SPARK_LOCAL_DIRS", str(local_dir))  # where the files go (no local.dir)
    assert spark.sparkContext.getConf().get("spark.local.dir", None) is None
    runs = (("a", tangled_input, "auto"), ("b", reordered, "files"), ("c", reordered, "shuffle"))
    for name, source, how in runs:
        flags = dict(input=str(source), seed=11, partitions=3, exchange=how)
        report = run(corpus_config(root, tmp_path / name, **flags), spark)
        assert report.exchange == ("shuffle" if name == "c" else "files")
        assert not any(local_dir.iterdir()), "the exchange folder is removed"
        outputs.append(
            {
                str(path.relative_to(tmp_path / name)): path.read_bytes()
                for path in sorted((tmp_path / name).rglob("*.parquet"))
                if "_stages" not in path.parts
            }
        )
    assert outputs[0] == outputs[1] == outputs[2]
    assert any(name.startswith("curated/lang=en/") for name in outputs[0])


def ds_table(folder):
    import pyarrow.dataset as ds

    return ds.dataset(folder, format="parquet").to_table()


def test_uid_hash_collisions_do_not_change_what_is_chosen(tangled_input, monkeypatch):
    """partition_records compares strings only for rows that share a uid hash; with a hash so
    weak that most uids collide, its records and choices must stay the same."""
    from curation.core import hashing
    from curation.curate import exchange
    from curation.curate import tasks as curate_tasks

    rows = ds_table(tangled_input)
    rows = rows.filter(pa.compute.is_valid(rows.column("uid"))).select(
        ["uid", "url", "page_url", "text", "lang"]
    )
    texts = rows.column("text").to_pylist()
    langs = rows.column("lang").to_pylist()
    entry_ids = [[len(t) % 7, len(t) % 11 + 7] if (len(t) + len(lang or "")) % 4 else []
                 for t, lang in zip(texts, langs)]  # fmt: skip
    records = rows.append_column("entry_ids", pa.array(entry_ids, pa.list_(pa.int32())))
    records = records.cast(exchange.RECORD_SCHEMA)
    known = pa.array(["da", "en", "ja", "ko"])

    def content(table):
        return sorted(
            tuple(tuple(v) if isinstance(v, list) else v for v in row.values())
            for row in table.to_pylist()
        )

    expected = curate_tasks.partition_records(records, 11, known)
    strong = hashing.uid_hashes
    monkeypatch.setattr(hashing, "uid_hashes", lambda uids: strong(uids) % np.uint64(13))
    collided = curate_tasks.partition_records(records, 11, known)
    assert content(collided) == content(expected)
    assert expected.num_rows < records.num_rows, "duplicates were dropped"
    chosen = expected.filter(expected.column("chosen"))
    assert chosen.num_rows == len(set(chosen.column("uid").to_pylist()))


# The curated_run fixture's curated/, entry_counts/ and thresholds/ as the job wrote them before
# the stage-package move (commit 098096b, two plans; pyarrow 26.0.1): every later change of the
# job must leave these bytes alone for the same inputs, seed and --partitions. `rows` hashes the
# rows of every file in file order (independent of the Parquet writer's version), `files` the
# bytes (checked where the writer is the recorded one). `make demo` was compared the same way.
RECORDED = {
    "pyarrow": "26.0.1",
    "files": "79888b39c20085a9b03edbe3e127bdedb7ec9f2139b2afea75dbe4ec9c9d35c3",
    "rows": "d8aade74eddf84df728de4b43b79b5cf333179b5576a786606cf42327b482f68",
}


def table_digests(out, names=("curated", "entry_counts", "thresholds")) -> tuple[str, str]:
    """(digest of the files' bytes, digest of their rows in file order), files in path order."""
    files, rows = hashlib.sha256(), hashlib.sha256()
    for name in names:
        for path in sorted((out / name).rglob("*.parquet")):
            rel = path.relative_to(out).as_posix().encode()
            files.update(rel + b"\0" + path.read_bytes())
            content = json.dumps(pq.read_table(path).to_pylist(), sort_keys=True)
            rows.update(rel + b"\0" + content.encode())
    return files.hexdigest(), rows.hexdigest()


def test_tables_equal_the_recorded_run_byte_for_byte(curated_run):
    out, _, _ = curated_run
    files, rows = table_digests(out)
    assert rows == RECORDED["rows"]
    if pa.__version__ == RECORDED["pyarrow"]:
        assert files == RECORDED["files"]


def test_code_version_covers_every_subpackage_wherever_the_checkout_is(tmp_path):
    """H.6: the --resume fingerprint's code digest changes with a source file of any
    subpackage, not with docs or with where the package lies."""
    from importlib.metadata import version

    from curation.core.tables import code_version

    package = Path(__file__).resolve().parents[1] / "curation"
    here = code_version()
    assert here.startswith(f"{version('metaclip-pipeline')}+")
    copy = tmp_path / "elsewhere" / "curation"
    shutil.copytree(package, copy, ignore=shutil.ignore_patterns("__pycache__", "sample_data"))
    assert code_version(copy) == here
    (copy / "README.md").write_text("docs do not count")
    assert code_version(copy) == here
    tasks = copy / "curate" / "tasks.py"
    tasks.write_text(tasks.read_text() + "\n# a change deep in a stage package\n")
    assert code_version(copy) != here


def test_duplicated_metadata_is_an_error_naming_the_language_not_new_counts(
    spark, corpus, tmp_path
):
    """Issue 36, case 1: the same lang=da file twice (or the same words under second ids) would
    count every da entry twice; the job stops with one line naming the partition instead."""
    from curation.curate.tasks import metadata_entries

    root, _, entries = corpus
    metadata = tmp_path / "metadata"
    shutil.copytree(root / "metadata", metadata)
    assert metadata_entries(str(metadata), "da").column("entry").to_pylist() == entries["da"]
    (first,) = (metadata / "lang=da").glob("*.parquet")
    shutil.copy(first, first.with_name("copy-" + first.name))
    with pytest.raises(ValueError, match=r"lang=da: \d+ duplicate entry_id value"):
        metadata_entries(str(metadata), "da")
    flags = dict(metadata=str(metadata), languages=("da", "en"), partitions=2)
    with pytest.raises(Exception, match=r"lang=da: \d+ duplicate entry_id value"):
        run(corpus_config(root, tmp_path / "out", **flags), spark)
    assert not (tmp_path / "out" / "_SUCCESS").exists()
    # the same words under a second set of ids
    table = pq.read_table(first)
    shifted = table.set_column(
        table.schema.get_field_index("entry_id"),
        "entry_id",
        pa.compute.add(table.column("entry_id"), len(entries["da"])),
    )
    pq.write_table(shifted, first.with_name("copy-" + first.name))
    with pytest.raises(ValueError, match=r"lang=da: \d+ duplicate entry value"):
        metadata_entries(str(metadata), "da")


TABLE_COLUMNS = {
    "matches": ["uid", "url", "page_url", "text", "lang", "entry_ids", "chosen"],
    "entry_counts": ["lang", "entry_id", "entry", "count"],
    "thresholds": ["lang", "t", "tail_fraction", "entries", "matched_records"],
    "curated": ["uid", "url", "text", "lang", "entry_ids", "keep_prob"],
}


def test_a_run_on_an_object_store_equals_the_local_run(
    spark, corpus, curated_run, s3, tmp_path, capfd, caplog
):
    """Metadata, input and output on an S3-compatible server (credentials and endpoint from the
    standard AWS_* variables only): every table equals the local run's row for row; each file
    is uploaded once under its final name (no temporary name, no copy: a rename on S3 is a copy
    and a delete); `--resume` on the store skips every stage; Delta output on the store is a
    Delta table that delta-rs reads back; the report reads the run from the store; the secret
    key is in no log line and no output, and a bucket that does not exist is a one-line error
    before any work; `--input-reader spark` on a Spark without Hadoop's S3 connector says which
    jar to add."""
    from dataclasses import replace

    from deltalake import DeltaTable

    root, _, _ = corpus
    local_out, local_report, _ = curated_run
    metadata = s3.upload(root / "metadata", "curate", "metadata")
    source = s3.upload(root / "alt_text.parquet", "curate", "in", "alt_text.parquet")
    output = s3.uri("curate", "run")
    first_request = len(s3.requests)
    caplog.set_level(logging.INFO, logger="curate")
    config = corpus_config(root, output, metadata=metadata, input=source, seed=7, partitions=4)
    report = run(config, spark)
    assert report.counts == local_report.counts and report.drops == local_report.drops
    copy = s3.download("curate", "run", to=tmp_path / "run")
    for name, columns in TABLE_COLUMNS.items():
        assert table_content(copy / name, columns) == table_content(local_out / name, columns)
    assert "_SUCCESS" in s3.keys("curate", "run") and "run.json" in s3.keys("curate", "run")
    writes = [r for r in s3.requests[first_request:] if '"PUT /lake/curate/run/' in r]
    assert any("/curated/lang=en/part-" in r for r in writes)
    assert not [r for r in writes if ".tmp" in r], "published under a temporary name"

    again = run(replace(config, resume=True), spark)
    assert set(again.stages) >= set(STAGE_NAMES)
    assert [again.stages[s] for s in STAGE_NAMES] == ["skipped"] * len(STAGE_NAMES)

    delta_out = s3.uri("curate", "delta")
    run(replace(config, output=delta_out, format="delta"), spark)
    delta = DeltaTable(f"{delta_out}/curated").to_pyarrow_table().to_pandas()
    delta["entry_ids"] = delta["entry_ids"].map(tuple)
    delta["lang"] = delta["lang"].astype(str)
    columns = TABLE_COLUMNS["curated"]
    assert sorted(map(tuple, delta[columns].values)) == curated_content(local_out)

    from curation.report.job import main as report

    assert report([output, "--html", str(tmp_path / "report.html")]) == 0
    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert f"<td>{local_report.counts['curated_records']}</td>" in html

    with pytest.raises(CurationError, match="no filesystem for s3:// .*: add the hadoop-aws jar"):
        run(replace(config, input_reader="spark", output=s3.uri("curate", "spark")), spark)

    with pytest.raises(CurationError) as missing:
        run(replace(config, output="s3://no-such-bucket/run"), spark)
    assert "cannot write to output s3://no-such-bucket/run" in str(missing.value)
    assert "\n" not in str(missing.value)

    from tests.s3_server import SECRET

    logs = caplog.text + "".join(capfd.readouterr())  # the job's log, Spark's, the report's
    assert "stage curated: done" in logs and SECRET not in logs
    everything = b"".join(p.read_bytes() for p in copy.rglob("*") if p.is_file())
    assert SECRET.encode() not in everything + html.encode() + str(missing.value).encode()


STAGE_NAMES = ("matches", "entry_counts", "thresholds", "curated")


@pytest.fixture(scope="module")
def recounted(spark, corpus, tmp_path_factory):
    """Issue 32, item 6: a run's pool of matched images exported from a loopback server that
    answers 404 for about a quarter of them, then the run again with --recount-from those
    shards."""
    pytest.importorskip("img2dataset")
    pytest.importorskip("skimage")
    from curation.shards import export as shards
    from curation.shards import loopback

    root, table, entries = corpus
    work = tmp_path_factory.mktemp("recount")
    subset = table.take(list(range(0, table.num_rows, 16)))
    pq.write_table(subset, work / "alt_text.parquet")
    flags = {"input": str(work / "alt_text.parquet"), "t_en": 5, "seed": 3}
    run(corpus_config(root, work / "run", **flags), spark)

    def rewrite(pool: pa.Table, base: str) -> pa.Table:
        digests = [hashlib.sha1(u.encode()).hexdigest() for u in pool["url"].to_pylist()]
        urls = [f"{base}/{'missing' if d[0] in '0123' else 'variant'}/{d}.jpg" for d in digests]
        return pool.set_column(pool.schema.get_field_index("url"), "url", pa.array(urls))

    names = list(loopback.BUNDLED_PHOTOS)
    photos = loopback.bundled_photo_dir()
    with loopback.serve_directory(photos, variants_of=names, lifetime_s=300) as base:
        config = shards.ExportConfig(
            curated=str(work / "run" / "curated"),
            output=str(work / "pool"),
            pool="matched",
            allow_local=True,
            samples_per_shard=100,
            processes=1,
            threads=16,
            timeout=5,
        )
        manifest, _ = shards.export_shards(config, url_rewrite=lambda t: rewrite(t, base))
    report = run(
        corpus_config(root, work / "after", recount_from=str(work / "pool"), **flags), spark
    )
    return work, subset, manifest, report, flags


def test_recount_from_shards_gives_the_reference_on_the_images_that_downloaded(recounted, corpus):
    work, subset, manifest, report, flags = recounted
    _, _, entries = corpus
    failed = manifest["download"]["failure_categories"]
    assert failed.get("http_404", 0) > 0.15 * manifest["download"]["attempted"]
    assert manifest["total_samples"] > 0
    survivors = set()
    for part in (work / "pool").glob("*.parquet"):
        meta = pq.read_table(part, columns=["uid", "status"]).to_pylist()
        survivors |= {m["uid"] for m in meta if m["status"] == "success"}
    assert len(survivors) == manifest["total_samples"]
    kept_input = subset.filter(pa.array([u in survivors for u in subset["uid"].to_pylist()]))
    counts, t, p, decisions = reference_run(kept_input, entries, flags["t_en"], flags["seed"])
    thresholds = read(work / "after" / "thresholds").set_index("lang")
    assert {lang: thresholds.loc[lang, "t"] for lang in thresholds.index} == t
    counted = read(work / "after" / "entry_counts")
    for lang, expected in counts.items():
        got = counted[counted["lang"] == lang].sort_values("entry_id")["count"].to_numpy()
        assert np.array_equal(got, expected), lang
    curated = read(work / "after" / "curated")
    got = {(r.uid, r.text, r.lang, round(r.keep_prob, 12)) for r in curated.itertuples()}
    expected = {
        (d.record.uid, d.record.text, d.record.lang, round(d.keep_prob, 12))
        for d in decisions
        if d.kept
    }
    assert got == expected and got
    assert set(curated["uid"]) <= survivors
    # the counts moved: images that never downloaded no longer count
    before = read(work / "run" / "entry_counts")["count"].sum()
    assert counted["count"].sum() < before
    assert report.recount["surviving_images"] == len(survivors)


def test_run_json_and_report_show_t_and_kept_before_and_after(recounted):
    pytest.importorskip("duckdb")
    from curation.report.job import CurationOutput, html_report, recount_table

    work, _, _, report, _ = recounted
    run_json = json.loads((work / "after" / "run.json").read_text())
    before = run_json["recount"]["before"]
    assert before["run_dir"] == str(work / "run")
    original = read(work / "run" / "thresholds").set_index("lang")["t"].to_dict()
    assert before["t"] == original
    frame = recount_table(CurationOutput(work / "after"))
    after = read(work / "after" / "thresholds").set_index("lang")["t"].to_dict()
    assert dict(zip(frame["lang"], frame["t after"])) == after
    assert dict(zip(frame["lang"], frame["t before"])) == original
    kept_after = run_json["counts"]["curated_per_lang"]
    assert dict(zip(frame["lang"], frame["kept after"])) == {
        lang: kept_after.get(lang, 0) for lang in frame["lang"]
    }
    assert frame["kept after"].sum() <= run_json["recount"]["surviving_images"]
    assert "Before and after download" in html_report(CurationOutput(work / "after"))
