"""Scale simulation: N alt-text records resampled from the real captions, curated locally.

Records are drawn with replacement (seeded) from the real caption pool — CC3M (en) and WIT
(11 languages) in ../shared/data, else curation/sample_data — so the language mix and the text
length distribution are the pool's; each record gets its own image URL (and uid). The script
prints both distributions for the pool and the generated set, runs `jobs/curate.py` on the
generated table (local Spark, all cores) at N/10 and at N while sampling the memory of its
process tree, and prints throughput, per-stage times, peak memory, the N vs N/10 per-record
cost ratio (baseline: the same job on the smaller input), the marginal rate between the two
sizes (wall and CPU time) and projections from them to --snapshot-records.

    .venv/bin/python benchmarks/simulate_scale.py [--records 10000000] [--metadata URI]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_curate import (  # noqa: E402
    base_records,
    become_subreaper,
    cpu,
    run_job,
    write_default_metadata,
)

from curation.identity import image_uid  # noqa: E402

CHUNK = 250_000
LENGTH_QUANTILES = (0.1, 0.5, 0.9, 0.99)


def pool_table() -> pa.Table:
    rows = base_records()
    return pa.table(
        {
            "url": [r[0] for r in rows],
            "page_url": [r[1] for r in rows],
            "text": [r[2] for r in rows],
            "lang": [r[3] for r in rows],
        }
    )


def describe(pool: pa.Table, picks: np.ndarray) -> tuple[dict[str, float], list[float]]:
    """(share of each language, text length quantiles in characters) of these pool rows."""
    langs = np.asarray(pool.column("lang").to_pylist(), dtype=object)[picks]
    counts = Counter(langs.tolist())
    total = sum(counts.values())
    lengths = pc.utf8_length(pool.column("text")).to_numpy()[picks]
    return (
        {lang: n / total for lang, n in sorted(counts.items())},
        [float(q) for q in np.quantile(lengths, LENGTH_QUANTILES)],
    )


def write_resampled(pool: pa.Table, n: int, out: Path, seed: int) -> np.ndarray:
    """n records drawn from the pool with replacement, in Parquet parts under out/; the picks."""
    out.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    drawn = []
    for part, start in enumerate(range(0, n, CHUNK)):
        size = min(CHUNK, n - start)
        picks = rng.integers(0, pool.num_rows, size)
        drawn.append(picks)
        chunk = pool.take(pa.array(picks))
        urls = [f"{url}?r={start + i}" for i, url in enumerate(chunk.column("url").to_pylist())]
        uids = [image_uid(u, p) for u, p in zip(urls, chunk.column("page_url").to_pylist())]
        table = chunk.set_column(0, "url", pa.array(urls)).append_column("uid", pa.array(uids))
        pq.write_table(table, out / f"part-{part:05d}.parquet")
    return np.concatenate(drawn)


def simulate(n: int, pool: pa.Table, metadata: str, scratch: Path, seed: int) -> dict:
    started = time.perf_counter()
    generated = write_resampled(pool, n, scratch / f"input_{n}", seed)
    generate_s = time.perf_counter() - started
    cores = os.cpu_count() or 1
    result = run_job(cores, metadata, scratch / f"input_{n}", scratch / f"out_{n}")
    return {"n": n, "generated": generated, "generate_s": generate_s, "cores": cores, **result}


def print_distributions(pool: pa.Table, picks: np.ndarray) -> None:
    pool_mix, pool_len = describe(pool, np.arange(pool.num_rows))
    gen_mix, gen_len = describe(pool, picks)
    print("language mix (pool -> generated):")
    print("  " + ", ".join(f"{k} {pool_mix[k]:.1%}->{gen_mix.get(k, 0):.1%}" for k in pool_mix))
    quantiles = "/".join(f"p{int(q * 100)}" for q in LENGTH_QUANTILES)
    print(
        f"text length {quantiles} (chars): pool {'/'.join(f'{x:.0f}' for x in pool_len)}, "
        f"generated {'/'.join(f'{x:.0f}' for x in gen_len)}"
    )


def print_run(run: dict) -> float:
    rate = run["n"] / run["seconds"]
    counts = run["report"]["counts"]
    stages = run["report"]["stages"]
    print(
        f"{run['n']:,} records (generated in {run['generate_s']:.0f}s): "
        f"curate {run['seconds']:.0f}s "
        f"on local[{run['cores']}], {rate:,.0f} records/s ({rate / run['cores']:,.0f} per core); "
        f"matched {counts['matched_records']:,}, curated {counts['curated_records']:,}"
    )
    print(
        "  stages (s): "
        + ", ".join(f"{k} {v}" for k, v in stages.items() if k != "total_s")
        + f"; peak RSS {run['peak_mib']['total']:,.0f} MiB (JVM {run['peak_mib']['jvm']:,.0f}, "
        f"largest Python worker {run['peak_mib']['python_worker']:,.0f})"
    )
    exact = run.get("cgroup_cpu_s") is not None
    print(
        f"  CPU time {cpu(run):,.0f} s ({'cgroup; ' if exact else ''}reaped {run['cpu_s']:,.0f}, "
        f"sampled {run['sampled_cpu_s']:,.0f}) = {cpu(run) / run['n'] * 1e6:,.0f} us per record "
        f"(wall x cores = {run['seconds'] * run['cores']:,.0f} s)"
    )
    return rate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=10_000_000, help="records to generate")
    parser.add_argument(
        "--metadata", help="metadata table URI (default: WordNet + caption n-grams)"
    )
    parser.add_argument("--seed", type=int, default=0, help="resampling seed")
    parser.add_argument(
        "--snapshot-records",
        type=float,
        default=10e9,
        help="alt-text records in one Common Crawl snapshot, for the projection (default 10e9)",
    )
    parser.add_argument("--workdir", help="scratch folder (default: a temporary one)")
    args = parser.parse_args(argv)
    become_subreaper()  # Spark's orphaned JVM is reaped here, so its CPU time is counted
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cpus; "
        f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}"
    )
    pool = pool_table()
    print(f"caption pool: {pool.num_rows:,} real captions (CC3M + WIT)")
    with tempfile.TemporaryDirectory(dir=args.workdir) as scratch:
        scratch = Path(scratch)
        metadata = args.metadata
        if metadata is None:
            write_default_metadata(scratch / "metadata")
            metadata = str(scratch / "metadata")
        small = simulate(max(args.records // 10, 1), pool, metadata, scratch, args.seed)
        small_rate = print_run(small)
        full = simulate(args.records, pool, metadata, scratch, args.seed)
        print_distributions(pool, full["generated"])
        rate = print_run(full)
        print(f"per-record cost at N vs N/10 (baseline): {small_rate / rate:.2f}x")
        # fixed costs (JVM start, automaton builds, small stages) vanish at snapshot scale:
        # project with the marginal rate between the two sizes
        marginal = (full["n"] - small["n"]) / max(full["seconds"] - small["seconds"], 1e-9)
        per_core = marginal / full["cores"]
        print(f"marginal rate N/10 -> N: {marginal:,.0f} records/s ({per_core:,.0f} per core)")
        core_hours = args.snapshot_records / per_core / 3600
        print(
            f"projection: {args.snapshot_records:,.0f} records at {per_core:,.0f} records/s/core "
            f"= {core_hours:,.0f} core-hours ({core_hours / 512:,.1f} h on 512 cores)"
        )
        cpu_per_record = (cpu(full) - cpu(small)) / (full["n"] - small["n"])
        cpu_hours = args.snapshot_records * cpu_per_record / 3600
        print(
            f"marginal CPU time N/10 -> N: {cpu_per_record * 1e6:,.1f} us per record; "
            f"projection: {cpu_hours:,.0f} CPU-hours for {args.snapshot_records:,.0f} records"
        )
        print(f"load average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
