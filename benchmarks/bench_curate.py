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


class MemorySampler:
    """Peak RSS of this process's descendants (the job, its JVM, its Python workers).

    Each process is read on its own: Spark leaves a zombie child behind, and a zombie must not
    void the whole sample.
    """

    def __init__(self, interval_s: float = 0.5):
        self.interval_s = interval_s
        self.peak_mib = {"total": 0.0, "jvm": 0.0, "python_worker": 0.0}
        self._cpu: dict[int, float] = {}  # pid -> CPU seconds last seen (user + system)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._done.set()
        self._thread.join()

    @property
    def cpu_s(self) -> float:
        """CPU seconds of the sampled processes (to their last sample): unlike wall time, this
        barely depends on what else the machine runs."""
        return sum(self._cpu.values())

    def _run(self):
        me = psutil.Process()
        while not self._done.wait(self.interval_s):
            total, jvm, worker = 0, 0, 0
            for process in me.children(recursive=True):
                try:
                    rss = process.memory_info().rss
                    name = process.name()
                    times = process.cpu_times()
                except psutil.Error:
                    continue
                self._cpu[process.pid] = times.user + times.system
                total += rss
                if name == "java":
                    jvm = max(jvm, rss)
                elif "python" in name:
                    try:
                        if "pyspark" in " ".join(process.cmdline()):
                            worker = max(worker, rss)
                    except psutil.Error:
                        pass
            for key, value in (("total", total), ("jvm", jvm), ("python_worker", worker)):
                self.peak_mib[key] = max(self.peak_mib[key], value / 2**20)


def run_job(cores: int, metadata: str, input_dir: Path, output: Path) -> dict:
    """jobs/curate.py with local[cores], its whole process tree (JVM included) pinned to that
    many CPUs: local[1] alone still lets the JVM's own threads use every core."""
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    cpus = sorted(os.sched_getaffinity(0))[:cores]
    cmd = [
        "taskset", "-c", ",".join(map(str, cpus)),
        sys.executable, str(ROOT / "jobs" / "curate.py"),
        "--metadata", metadata, "--input", str(input_dir), "--output", str(output),
        "--t-en", "2000", "--master", f"local[{cores}]", "--partitions", str(4 * cores),
    ]  # fmt: skip
    started = time.perf_counter()
    with MemorySampler() as memory:
        result = subprocess.run(cmd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if result.returncode:
        raise SystemExit(f"curate failed with local[{cores}]:\n{result.stderr[-3000:]}")
    report = json.loads((output / "run.json").read_text())
    return {
        "seconds": elapsed,
        "report": report,
        "peak_mib": memory.peak_mib,
        "cpu_s": memory.cpu_s,
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
                f"peak RSS {result['peak_mib']['total']:,.0f} MiB (JVM "
                f"{result['peak_mib']['jvm']:,.0f}, largest Python worker "
                f"{result['peak_mib']['python_worker']:,.0f}); {result['cpu_s']:.0f} CPU s"
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
