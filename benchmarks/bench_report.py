"""Analyst queries on a 10M-row entry_counts table: curation.report.job (DuckDB) vs pandas.

The table is built from real data: WordNet entries and their match counts over the CC3M and WIT
English captions (curation.matching), resampled into N languages x M entries, written as the job
writes it (Parquet partitioned by lang, several files per partition), plus its thresholds table.
Each query is timed through curation.report.job on the Parquet files, on the same table loaded into
memory (`materialize=True`, a notebook session) and on the same files converted to Delta; the
baseline is what an analyst does without it: pandas.read_parquet (with the lang filter pushed
down where the query has one) and a filter. Answer sizes are compared.

    .venv/bin/python benchmarks/bench_report.py [--rows 10000000] [--languages 20]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from curation.balance import tail_fraction, threshold_for_fraction
from curation.core import samples
from curation.matching import EntryMatcher
from curation.report.job import CurationOutput

SHARED_CC3M = Path(__file__).resolve().parents[2] / "shared" / "data" / "cc3m_val_10k.tsv"


def real_entries_and_counts() -> tuple[list[str], np.ndarray]:
    entries = [e for e in samples.wordnet_lemmas() if len(e) > 1]
    path = SHARED_CC3M if SHARED_CC3M.exists() else samples.SAMPLE_DIR / "cc3m_val_2k.tsv"
    texts = [caption for caption, _ in samples.cc3m_pairs(path)]
    texts += [r["caption_reference_description"] for r in samples.wit_rows("en")]
    counts = np.zeros(len(entries), dtype=np.int64)
    for ids in EntryMatcher(entries).match_many(texts):
        counts[ids] += 1
    return entries, counts


def write_table(root: Path, rows: int, n_langs: int, seed: int) -> dict[str, float]:
    """entry_counts/ and thresholds/ under root; returns t per language."""
    entries, counts = real_entries_and_counts()
    rng = np.random.default_rng(seed)
    per_lang = rows // n_langs
    langs = ["en"] + [f"l{i:02d}" for i in range(1, n_langs)]
    entry_array = pa.array(entries)
    thresholds = {}
    t_en = 50
    p = tail_fraction(counts[counts > 0], t_en)
    for lang in langs:
        pick = rng.integers(len(entries), size=per_lang)
        pick.sort()  # entry ids follow code-point order, as the metadata build assigns them
        # duplicates of a resampled entry get a suffix, so entries stay distinct per language
        first = np.r_[True, pick[1:] != pick[:-1]]
        group_start = np.maximum.accumulate(np.where(first, np.arange(per_lang), 0))
        rank = np.arange(per_lang) - group_start
        names = entry_array.take(pa.array(pick)).to_pylist()
        names = [n if r == 0 else f"{n} {r}" for n, r in zip(names, rank.tolist())]
        lang_counts = counts[rng.integers(len(counts), size=per_lang)]
        table = pa.table(
            {
                "entry_id": pa.array(np.arange(per_lang, dtype=np.int32)),
                "entry": pa.array(names),
                "count": pa.array(lang_counts),
            }
        )
        folder = root / "entry_counts" / f"lang={lang}"
        folder.mkdir(parents=True)
        for i, start in enumerate(range(0, per_lang, per_lang // 4 + 1)):
            pq.write_table(table.slice(start, per_lang // 4 + 1), folder / f"part-{i:05d}.parquet")
        nonzero = lang_counts[lang_counts > 0]
        thresholds[lang] = float(t_en if lang == "en" else threshold_for_fraction(nonzero, p))
    (root / "thresholds").mkdir()
    pq.write_table(
        pa.table(
            {
                "lang": list(thresholds),
                "t": list(thresholds.values()),
                "tail_fraction": [p] * len(thresholds),
                "entries": [per_lang] * len(thresholds),
                "matched_records": [0] * len(thresholds),
            }
        ),
        root / "thresholds" / "part-00000.parquet",
    )
    return thresholds


def timed(fn, repeats: int) -> tuple[float, float, object]:
    """(first, median of the rest, answer) in seconds."""
    times, answer = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        answer = fn()
        times.append(time.perf_counter() - started)
    return times[0], statistics.median(times[1:] or times), answer


def queries(root: Path, lang: str):
    """name -> (curation.report.job call, pandas baseline) answering the same question."""
    table = str(root / "entry_counts")

    def pandas_lang(lang_):
        frame = pd.read_parquet(table, filters=[("lang", "=", lang_)])
        frame["lang"] = frame["lang"].astype(str)
        return frame

    def pandas_all():
        frame = pd.read_parquet(table)
        frame["lang"] = frame["lang"].astype(str)
        return frame

    def top(frame, k=20):
        return frame.sort_values(["count", "entry_id"], ascending=[False, True]).head(k)

    return {
        "lookup 'dog', every language": (
            lambda out: out.lookup("dog"),
            lambda: pandas_all().query("entry == 'dog'"),
        ),
        "prefix 'dog', every language": (
            lambda out: out.lookup("dog", prefix=True, limit=10**6),
            lambda: (lambda f: f[f["entry"].str.startswith("dog")])(pandas_all()),
        ),
        f"prefix 'sea', lang={lang}": (
            lambda out: out.lookup("sea", lang=lang, prefix=True, limit=10**6),
            lambda: (lambda f: f[f["entry"].str.startswith("sea")])(pandas_lang(lang)),
        ),
        f"top-20, lang={lang}": (
            lambda out: out.top_entries(lang, 20),
            lambda: top(pandas_lang(lang)),
        ),
        f"bottom-20 (count >= 1), lang={lang}": (
            lambda out: out.bottom_entries(lang, 20),
            lambda: (lambda f: f[f["count"] > 0].sort_values(["count", "entry_id"]).head(20))(
                pandas_lang(lang)
            ),
        ),
        f"count distribution, lang={lang}": (
            lambda out: out.count_distribution(lang),
            lambda: (lambda f: f[f["count"] > 0].groupby("count").size())(pandas_lang(lang)),
        ),
        "entries / matched entries per language": (
            lambda out: out.sql(
                "SELECT lang, count(*) AS n, count_if(count > 0) AS m FROM entry_counts "
                "GROUP BY lang ORDER BY lang"
            ),
            lambda: (
                lambda f: f.groupby("lang").agg(
                    n=("count", "size"), m=("count", lambda c: (c > 0).sum())
                )
            )(pandas_all()),
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--languages", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5, help="runs per query (report)")
    parser.add_argument("--baseline-repeats", type=int, default=2, help="runs per pandas query")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", help="where to write the table (default: a temp folder)")
    args = parser.parse_args()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}"
    )

    root = Path(args.workdir or tempfile.mkdtemp(prefix="bench_report_"))
    if root.exists() and args.workdir:
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    try:
        started = time.perf_counter()
        write_table(root, args.rows, args.languages, args.seed)
        size = sum(f.stat().st_size for f in (root / "entry_counts").rglob("*.parquet"))
        print(
            f"entry_counts: {args.rows:,} rows, {args.languages} languages, "
            f"{size / 2**20:.0f} MiB Parquet, built in {time.perf_counter() - started:.0f}s"
        )
        lang = f"l{args.languages // 2:02d}" if args.languages > 1 else "en"
        qs = queries(root, lang)
        results = {name: {} for name in qs}

        started = time.perf_counter()
        on_files = CurationOutput(root)
        open_files = time.perf_counter() - started
        started = time.perf_counter()
        in_memory = CurationOutput(root, materialize=True)
        open_memory = time.perf_counter() - started
        for name, (report_fn, pandas_fn) in qs.items():
            results[name]["files"] = timed(partial(report_fn, on_files), args.repeats)
            results[name]["memory"] = timed(partial(report_fn, in_memory), args.repeats)
            results[name]["pandas"] = timed(pandas_fn, args.baseline_repeats)
            sizes = {len(r[2]) for r in results[name].values()}
            assert len(sizes) == 1 and sizes != {0}, (name, sizes)
        in_memory.con.close()

        from deltalake import Field, Schema, convert_to_deltalake

        convert_to_deltalake(
            str(root / "entry_counts"),
            partition_by=Schema([Field("lang", "string")]),
            partition_strategy="hive",
        )
        convert_to_deltalake(str(root / "thresholds"))
        started = time.perf_counter()
        delta = CurationOutput(root)
        open_delta = time.perf_counter() - started
        assert delta.tables["entry_counts"] == "delta"
        for name, (report_fn, _) in qs.items():
            results[name]["delta"] = timed(partial(report_fn, delta), args.repeats)
            assert len(results[name]["delta"][2]) == len(results[name]["files"][2]), name

        print(
            f"open: Parquet views {open_files * 1000:.0f} ms, in memory {open_memory:.1f} s, "
            f"Delta {open_delta * 1000:.0f} ms"
        )
        header = (
            "| query | report, Parquet files | report, in memory | report, Delta | "
            "pandas read_parquet + filter | speed-up (files vs pandas) |"
        )
        print(header)
        print("|---|---:|---:|---:|---:|---:|")
        for name, r in results.items():
            cells = [f"{r[k][1] * 1000:.0f} ms" for k in ("files", "memory", "delta")]
            print(
                f"| {name} | {' | '.join(cells)} | {r['pandas'][1]:.2f} s | "
                f"{r['pandas'][1] / r['files'][1]:.0f}x |"
            )
        worst = max(r["files"][1] for r in results.values())
        first = max(r["files"][0] for r in results.values())
        print(
            f"slowest query on the files: median {worst * 1000:.0f} ms, "
            f"first run {first * 1000:.0f} ms "
            f"({'under' if worst < 1 else 'OVER'} 1 s)"
        )
    finally:
        if not args.workdir:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
