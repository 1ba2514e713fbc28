"""Whole curation job throughput: records/s per core at 1M records, local[1] vs local[2].

Input: the real CC3M + WIT captions repeated (each repetition a distinct image URL) to --records.
Metadata: --metadata URI (e.g. the output of `make metadata`), or by default WordNet lemmas for
English and caption n-grams for the WIT languages. Each configuration runs `jobs/curate.py` in
its own process while this script samples the memory of the whole process tree.

    .venv/bin/python benchmarks/bench_curate.py [--records 1000000] [--metadata URI]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from curation import samples  # noqa: E402
from curation.extract import image_uid  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"


def base_records() -> list[tuple[str, str | None, str, str]]:
    cc3m = SHARED / "cc3m_val_10k.tsv"
    cc3m = cc3m if cc3m.exists() else samples.SAMPLE_DIR / "cc3m_val_2k.tsv"
    rows = [(url, None, caption, "en") for caption, url in samples.cc3m_pairs(cc3m)]
    wit = SHARED / "wit" if (SHARED / "wit").exists() else samples.SAMPLE_DIR / "wit"
    for lang in samples.WIT_LANGUAGES:
        for row in samples.wit_rows(lang, wit):
            rows.append(
                (row["image_url"], row["page_url"], row["caption_reference_description"], lang)
            )
    return rows


def write_input(path: Path, n: int) -> None:
    base = base_records()
    for start in range(0, n, 200_000):
        chunk = [base[i % len(base)] for i in range(start, min(n, start + 200_000))]
        urls = [f"{url}?copy={(start + i) // len(base)}" for i, (url, *_rest) in enumerate(chunk)]
        table = pa.table(
            {
                "uid": [image_uid(u, p) for u, (_, p, _, _) in zip(urls, chunk)],
                "url": urls,
                "page_url": [r[1] for r in chunk],
                "text": [r[2] for r in chunk],
                "lang": [r[3] for r in chunk],
            }
        )
        pq.write_table(table, path / f"part-{start // 200_000:05d}.parquet")


def write_default_metadata(path: Path) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from tests.curation_fixtures import wit_entries, write_metadata

    entries = {"en": [e for e in samples.wordnet_lemmas() if len(e) > 1]}
    rows = base_records()
    for lang in samples.WIT_LANGUAGES:
        if lang != "en":
            entries[lang] = wit_entries([r[2] for r in rows if r[3] == lang], lang)
    write_metadata(path, entries)


def run_job(cores: int, metadata: str, input_dir: Path, output: Path) -> dict:
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    cmd = [
        sys.executable,
        str(ROOT / "jobs" / "curate.py"),
        "--metadata",
        metadata,
        "--input",
        str(input_dir),
        "--output",
        str(output),
        "--t-en",
        "2000",
        "--master",
        f"local[{cores}]",
        "--partitions",
        str(4 * cores),
    ]
    peak = {"total": 0, "python_worker": 0}
    process = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    done = threading.Event()

    def sample():
        root = psutil.Process(process.pid)
        while not done.is_set():
            try:
                tree = [root, *root.children(recursive=True)]
                rss = [p.memory_info().rss for p in tree]
                workers = [p.memory_info().rss for p in tree if "pyspark" in " ".join(p.cmdline())]
                peak["total"] = max(peak["total"], sum(rss))
                peak["python_worker"] = max(peak["python_worker"], max(workers, default=0))
            except psutil.Error:
                pass
            time.sleep(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    started = time.perf_counter()
    sampler.start()
    stdout, stderr = process.communicate()
    elapsed = time.perf_counter() - started
    done.set()
    if process.returncode:
        raise SystemExit(f"curate failed with local[{cores}]:\n{stderr[-3000:]}")
    report = json.loads((output / "run.json").read_text())
    return {
        "seconds": elapsed,
        "report": report,
        "peak_mib": {k: v / 2**20 for k, v in peak.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000, help="alt-text records")
    parser.add_argument(
        "--metadata", help="metadata table URI (default: WordNet + caption n-grams)"
    )
    parser.add_argument("--workdir", help="scratch folder (default: a temporary one)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.workdir) as scratch:
        scratch = Path(scratch)
        (scratch / "input").mkdir()
        write_input(scratch / "input", args.records)
        metadata = args.metadata
        if metadata is None:
            write_default_metadata(scratch / "metadata")
            metadata = str(scratch / "metadata")
        print(f"machine: {platform.machine()}, {os.cpu_count()} cpus; records: {args.records:,}")
        results = {}
        for cores in (1, 2):
            result = run_job(cores, metadata, scratch / "input", scratch / f"out{cores}")
            results[cores] = result
            rate = args.records / result["seconds"]
            counts = result["report"]["counts"]
            print(
                f"local[{cores}]: {result['seconds']:.1f}s, {rate:,.0f} records/s "
                f"({rate / cores:,.0f} per core); matched {counts['matched_records']:,}, "
                f"curated {counts['curated_records']:,}; "
                f"peak RSS {result['peak_mib']['total']:,.0f} MiB "
                f"(largest Python worker {result['peak_mib']['python_worker']:,.0f} MiB)"
            )
        scaling = results[1]["seconds"] / results[2]["seconds"]
        per_core = args.records / results[2]["seconds"] / 2
        core_hours = 10e9 / per_core / 3600
        print(f"scaling local[1] -> local[2]: {scaling:.2f}x")
        print(
            f"projection: 10 billion alt-texts at {per_core:,.0f} records/s/core = "
            f"{core_hours:,.0f} core-hours"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
