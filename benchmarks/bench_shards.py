"""Shard export throughput (download + decode + resize to 256 + write) against a loopback server.

Ours: `curation.shards.export_shards` (URL filter, img2dataset with our settings, sizes/manifest).
Baseline: plain img2dataset on the same flat Parquet list, as a user would run it
(webdataset, keep_ratio 256, its defaults otherwise), same processes and threads, same server.
Input: scikit-image's bundled CC0 photographs (0.1-0.8 MB, 512-3000 px), each URL unique.

    .venv/bin/python benchmarks/bench_shards.py [--images 2000] [--processes 2] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from curation import samples, shards

LANGS = ("en", "ja", "ar", "vi", "ko", "tr")


def write_curated(base_url: str, n: int, path: Path) -> str:
    captions = {
        lang: [r["caption_reference_description"] for r in samples.wit_rows(lang)] for lang in LANGS
    }
    names = shards.BUNDLED_PHOTOS
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


def run_ours(curated: str, out: Path, args) -> tuple[float, int]:
    config = shards.ExportConfig(
        curated=curated,
        output=str(out),
        processes=args.processes,
        threads=args.threads,
        samples_per_shard=args.samples_per_shard,
        timeout=10,
        allow_local=True,
    )
    started = time.perf_counter()
    manifest, _ = shards.export_shards(config, log=lambda *_: None)
    return time.perf_counter() - started, manifest["total_samples"]


def run_plain(list_file: str, out: Path, args) -> tuple[float, int]:
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    from img2dataset import download

    started = time.perf_counter()
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
    elapsed = time.perf_counter() - started
    ok = sum(json.loads(p.read_text())["successes"] for p in out.glob("*_stats.json"))
    return elapsed, ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--samples-per-shard", type=int, default=250)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench_shards_"))
    try:
        with shards.serve_directory(shards.bundled_photo_dir(), lifetime_s=3600) as base:
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
                        seconds, n = run_ours(curated, out, args)
                    else:
                        seconds, n = run_plain(str(list_file), out, args)
                    if n != args.images:
                        raise SystemExit(f"{name}: {n} of {args.images} images succeeded")
                    results[name].append(n / seconds)
                    print(
                        f"  {name:12s} rep {rep}: {n} images, {seconds:.1f}s, {n / seconds:.1f}/s"
                    )
                    shutil.rmtree(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    ours, plain = max(results["ours"]), max(results["img2dataset"])
    cores = args.processes
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores; "
        f"{args.images} images, {cores} processes x {args.threads} threads, resize 256"
    )
    print(f"ours:        {ours:.1f} images/s = {ours / cores:.1f} images/s/core (best of reps)")
    print(f"img2dataset: {plain:.1f} images/s = {plain / cores:.1f} images/s/core (best of reps)")
    print(f"ratio ours/img2dataset: {ours / plain:.2f}x")
    print(f"published img2dataset: ~1350 images/s on 16 cores = {1350 / 16:.0f} images/s/core")


if __name__ == "__main__":
    main()
