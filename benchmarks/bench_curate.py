"""Whole curation job throughput: records per CPU-second against a release-style baseline.

Input: the real CC3M + WIT captions repeated (each repetition a distinct image URL) to each of
--sizes. Metadata: --metadata URI (e.g. the output of `make metadata`), or by default WordNet
lemmas for English and caption n-grams for the WIT languages. Per size, on one core (taskset):
- baseline: `benchmarks/release_style_curate.py`, one Python process in the style of the MetaCLIP
  2 release's scripts (pyahocorasick `iter`, numpy counts, `p_to_t`, per-image choice and keep;
  every record in memory);
- ours: `jobs/curate.py --master local[1]`; at the first size also local[2] (scaling).
CPU seconds are the whole process tree's, from the kernel's accounting of reaped children
(`getrusage(RUSAGE_CHILDREN)`): this script makes itself a child subreaper, so the JVM the job's
driver leaves behind is handed to it and reaped here, and with it the daemon and the short-lived
Python workers the daemon reaped; as a cross-check, sampled with psutil every 0.5 s (which misses
workers that live between two samples). Two sizes give each side's fixed cost and marginal
cost per record.

    .venv/bin/python benchmarks/bench_curate.py [--sizes 1000000,3000000] [--metadata URI]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
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


def become_subreaper() -> None:
    """Orphaned descendants (Spark's JVM, which the job's driver does not wait for) are handed
    to this process instead of init, so that `reap_descendants` counts their CPU time."""
    import ctypes

    pr_set_child_subreaper = 36
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(pr_set_child_subreaper, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def reap_descendants() -> None:
    """Wait for every remaining descendant: their CPU time joins RUSAGE_CHILDREN."""
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_baseline(metadata: str, input_dir: Path, output: Path) -> dict:
    cpu = sorted(os.sched_getaffinity(0))[0]
    cmd = [
        "taskset", "-c", str(cpu), sys.executable,
        str(ROOT / "benchmarks" / "release_style_curate.py"),
        str(input_dir), metadata, str(output), "--t-en", "2000",
    ]  # fmt: skip
    started, before = time.perf_counter(), children_cpu_s()
    with MemorySampler() as memory:
        result = subprocess.run(cmd, capture_output=True, text=True)
        reap_descendants()
    if result.returncode:
        raise SystemExit(f"baseline failed:\n{result.stderr[-3000:]}")
    return {
        "seconds": time.perf_counter() - started,
        "cpu_s": children_cpu_s() - before,
        "sampled_cpu_s": memory.cpu_s,
        "peak_mib": memory.peak_mib,
        "report": json.loads(result.stdout.strip().splitlines()[-1]),
    }


def run_job(
    cores: int, metadata: str, input_dir: Path, output: Path, plan: str = "one-shuffle"
) -> dict:
    """jobs/curate.py with local[cores], its whole process tree (JVM included) pinned to that
    many CPUs: local[1] alone still lets the JVM's own threads use every core."""
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    cpus = sorted(os.sched_getaffinity(0))[:cores]
    cmd = [
        "taskset", "-c", ",".join(map(str, cpus)),
        sys.executable, str(ROOT / "jobs" / "curate.py"),
        "--metadata", metadata, "--input", str(input_dir), "--output", str(output),
        "--t-en", "2000", "--master", f"local[{cores}]", "--partitions", str(4 * cores),
        "--plan", plan,
    ]  # fmt: skip
    started, before = time.perf_counter(), children_cpu_s()
    with MemorySampler() as memory:
        result = subprocess.run(cmd, env=env, capture_output=True, text=True)
        reap_descendants()
    elapsed = time.perf_counter() - started
    cpu_s = children_cpu_s() - before
    if result.returncode:
        raise SystemExit(f"curate failed with local[{cores}]:\n{result.stderr[-3000:]}")
    report = json.loads((output / "run.json").read_text())
    return {
        "seconds": elapsed,
        "report": report,
        "peak_mib": memory.peak_mib,
        "cpu_s": cpu_s,
        "sampled_cpu_s": memory.cpu_s,
    }


def cpu(run: dict) -> float:
    """The larger of the two CPU figures: the conservative one for either side."""
    return max(run["cpu_s"], run["sampled_cpu_s"])


def fixed_and_marginal(runs: dict[int, dict]) -> tuple[float, float]:
    """(fixed CPU-s, marginal CPU-µs per record) from the two largest sizes."""
    (n1, a), (n2, b) = sorted(runs.items())[-2:]
    marginal = (cpu(b) - cpu(a)) / (n2 - n1)
    return cpu(a) - marginal * n1, marginal * 1e6


def describe(name: str, n: int, run: dict) -> str:
    peak = run["peak_mib"]
    return (
        f"{name}: {run['seconds']:.1f} s wall, {run['cpu_s']:.1f} CPU-s "
        f"(sampled {run['sampled_cpu_s']:.1f}), {n / cpu(run):,.0f} records per CPU-s; "
        f"matched {run['report_counts']['matched_records']:,}, curated "
        f"{run['report_counts']['curated_records']:,}; peak RSS {peak['total']:,.0f} MiB"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000000,3000000", help="comma-separated record counts")
    parser.add_argument(
        "--metadata", help="metadata table URI (default: WordNet + caption n-grams)"
    )
    parser.add_argument("--no-baseline", action="store_true", help="skip the release-style run")
    parser.add_argument(
        "--plan",
        default="one-shuffle",
        choices=["one-shuffle", "per-stage"],
        help="jobs/curate.py --plan (per-stage: the previous plan, for comparison)",
    )
    parser.add_argument("--workdir", help="scratch folder (default: a temporary one)")
    args = parser.parse_args(argv)
    sizes = sorted(int(n) for n in args.sizes.split(","))
    become_subreaper()
    with tempfile.TemporaryDirectory(dir=args.workdir) as scratch:
        scratch = Path(scratch)
        metadata = args.metadata
        if metadata is None:
            write_default_metadata(scratch / "metadata")
            metadata = str(scratch / "metadata")
        print(f"machine: {platform.machine()}, {os.cpu_count()} cpus; sizes: {sizes}")
        ours, baseline, two_cores = {}, {}, None
        for n in sizes:
            (scratch / f"input{n}").mkdir()
            write_input(scratch / f"input{n}", n)
            if not args.no_baseline:
                run = run_baseline(metadata, scratch / f"input{n}", scratch / f"base{n}.parquet")
                run["report_counts"] = run["report"]
                baseline[n] = run
                print(describe(f"{n:,} baseline (1 core)", n, run), flush=True)
            run = run_job(1, metadata, scratch / f"input{n}", scratch / f"out{n}_1", args.plan)
            run["report_counts"] = run["report"]["counts"]
            ours[n] = run
            print(describe(f"{n:,} jobs/curate.py local[1] {args.plan}", n, run), flush=True)
            if n == sizes[0]:
                two_cores = run_job(
                    2, metadata, scratch / f"input{n}", scratch / f"out{n}_2", args.plan
                )
                two_cores["report_counts"] = two_cores["report"]["counts"]
                print(describe(f"{n:,} jobs/curate.py local[2]", n, two_cores), flush=True)
        largest = sizes[-1]
        if baseline:
            ratio = cpu(baseline[largest]) / cpu(ours[largest])
            print(f"records per CPU-s at {largest:,}: ours / baseline = {ratio:.2f}x")
        if len(sizes) > 1:
            for name, runs in (("ours", ours), ("baseline", baseline)):
                if runs:
                    fixed, marginal = fixed_and_marginal(runs)
                    print(f"{name}: fixed {fixed:.1f} CPU-s, marginal {marginal:.2f} CPU-µs/record")
        scaling = ours[sizes[0]]["seconds"] / two_cores["seconds"]
        per_core = sizes[0] / two_cores["seconds"] / 2
        print(f"scaling local[1] -> local[2] at {sizes[0]:,}: {scaling:.2f}x")
        print(
            f"projection: 10 billion alt-texts at {per_core:,.0f} records/s/core = "
            f"{10e9 / per_core / 3600:,.0f} core-hours"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
