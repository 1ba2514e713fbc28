"""Shard export throughput (download + decode + resize to 256 + write) against a loopback server.

Ours: `curation.shards.export.export_shards` (URL filter, img2dataset with our settings,
sizes/manifest).
Baseline: plain img2dataset on the same flat Parquet list, as a user would run it
(webdataset, keep_ratio 256, its defaults otherwise), same processes and threads, same server.
Input: scikit-image's bundled CC0 photographs (0.1-0.8 MB, 512-3000 px), each URL unique.

    .venv/bin/python benchmarks/bench_shards.py [--images 1500] [--processes 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from curation.core import samples
from curation.shards import export as shards
from curation.shards import loopback

LANGS = ("en", "ja", "ar", "vi", "ko", "tr")


def write_curated(base_url: str, n: int, path: Path) -> str:
    captions = {
        lang: [r["caption_reference_description"] for r in samples.wit_rows(lang)] for lang in LANGS
    }
    names = loopback.BUNDLED_PHOTOS
    rows = []
    for i in range(n):
        lang = LANGS[i % len(LANGS)]
        rows.append(
            {
                "uid": f"{(i * 2654435761) % 2**32:08x}{i:06d}",
                "url": f"{base_url}/{names[i % len(names)]}?i={i}",
                "text": captions[lang][i % len(captions[lang])],
                "lang": lang,
                "entry_ids": [i % 97],
                "keep_prob": 1.0,
            }
        )
    ds.write_dataset(
        pa.Table.from_pylist(rows),
        path,
        format="parquet",
        partitioning=["lang"],
        partitioning_flavor="hive",
    )
    (path / "_SUCCESS").write_text("")
    return str(path)


class Clock:
    """Wall seconds, and CPU seconds of this thread plus the worker processes it waited for.

    The VM is shared (load average often 5-15 on 2 cores), so wall time mostly measures the
    neighbours; CPU seconds per image is what an idle core would take. The loopback server's
    threads are not counted (the same server serves both sides).
    """

    def __enter__(self):
        self.wall = time.perf_counter()
        self.cpu = time.thread_time() + _children_cpu()
        return self

    def __exit__(self, *_):
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.thread_time() + _children_cpu() - self.cpu


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_ours(curated: str, out: Path, args) -> tuple[Clock, int]:
    config = shards.ExportConfig(
        curated=curated,
        output=str(out),
        processes=args.processes,
        threads=args.threads,
        samples_per_shard=args.samples_per_shard,
        timeout=10,
        allow_local=True,
    )
    with Clock() as clock:
        manifest, _ = shards.export_shards(config, log=lambda *_: None)
    return clock, manifest["total_samples"]


def run_plain(list_file: str, out: Path, args) -> tuple[Clock, int]:
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    from img2dataset import download

    clock = Clock().__enter__()
    download(
        url_list=list_file,
        output_folder=str(out),
        input_format="parquet",
        url_col="url",
        caption_col="caption",
        save_additional_columns=["uid", "lang", "entry_ids"],
        output_format="webdataset",
        image_size=256,
        resize_mode="keep_ratio",
        processes_count=args.processes,
        thread_count=args.threads,
        number_sample_per_shard=args.samples_per_shard,
        timeout=10,
    )
    clock.__exit__()
    ok = sum(json.loads(p.read_text())["successes"] for p in out.glob("*_stats.json"))
    return clock, ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1500)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--samples-per-shard", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench_shards_"))
    try:
        with loopback.serve_directory(loopback.bundled_photo_dir(), lifetime_s=3600) as base:
            curated = write_curated(base, args.images, work / "curated")
            # the same flat list ours writes, for plain img2dataset
            table, _ = shards.read_curated(curated)
            kept, _ = shards.filter_urls(table, allow_local=True)
            list_file = work / "list.parquet"
            pq.write_table(shards.download_list(kept), list_file)
            results = {"ours": [], "img2dataset": []}
            for rep in range(args.repeats):
                # alternate the order so neither side always runs on a warmer machine
                order = ("img2dataset", "ours") if rep % 2 == 0 else ("ours", "img2dataset")
                for name in order:
                    out = work / f"{name}_{rep}"
                    if name == "ours":
                        clock, n = run_ours(curated, out, args)
                    else:
                        clock, n = run_plain(str(list_file), out, args)
                    if n != args.images:
                        raise SystemExit(f"{name}: {n} of {args.images} images succeeded")
                    results[name].append((n / clock.wall, n / clock.cpu))
                    print(
                        f"  {name:12s} rep {rep}: {n} images, {clock.wall:.1f}s wall "
                        f"({n / clock.wall:.1f}/s), {clock.cpu:.1f} CPU s "
                        f"({n / clock.cpu:.1f}/CPU s)"
                    )
                    shutil.rmtree(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    cores = args.processes
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, load average "
        f"{os.getloadavg()[0]:.1f}; {args.images} images, {cores} processes x {args.threads} "
        "threads, resize 256"
    )
    for name in ("ours", "img2dataset"):
        wall = statistics.median(w for w, _ in results[name])
        cpu = statistics.median(c for _, c in results[name])
        print(
            f"{name:12s} median: {wall:.1f} images/s wall = {wall / cores:.1f}/s per core; "
            f"{cpu:.1f} images per CPU second"
        )
    for i, label in ((0, "wall"), (1, "CPU")):
        ratios = [o[i] / p[i] for o, p in zip(results["ours"], results["img2dataset"])]
        print(
            f"ratio ours/img2dataset ({label}), median of paired reps: "
            f"{statistics.median(ratios):.2f}x  (reps: {', '.join(f'{r:.2f}' for r in ratios)})"
        )
    print(f"published img2dataset: ~1350 images/s on 16 cores = {1350 / 16:.0f} images/s/core")


if __name__ == "__main__":
    main()
