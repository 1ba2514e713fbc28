"""The image filter stage: WebDataset shards in, the same layout out, minus what must not be
trained on, faces blurred. A Spark job in four steps:

1. analyze: one task per input shard (decode, SHA-256/MD5, PDQ, NSFW score, face boxes) ->
   OUTPUT/_analysis/NNNNN.parquet. A shard whose analysis exists for the same
   input and flags is not analyzed again (a killed run resumes).
2. decide (driver): the rules of decide.py over every shard's analysis at once ->
   OUTPUT/image_filter/ (Parquet: one row per sample, its decision and reason).
3. write: one task per shard whose kept set (or blur boxes) differs from what OUTPUT/shards
   holds -> OUTPUT/shards/NNNNN.{tar,parquet} and NNNNN_filter.json (written last).
4. summarize: OUTPUT/shards/sizes.json and manifest.json (drop counts by reason, the
   evaluation images found, the flags), and one line like img2dataset's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import posixpath
import threading
import time
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq

from curation.core import hashing, tables
from curation.core.jobs import FilterError
from curation.core.spark import get_spark
from curation.core.uris import open_binary
from curation.image_filter import analyze, blocklists, evalsets, hashes
from curation.image_filter.decide import Rules, decide
from curation.image_filter.nsfw import DEFAULT_THRESHOLD
from curation.image_filter.rewrite import rewrite_shard

ANALYSIS_DIR = "_analysis"  # beside image_filter/, which is rewritten whole each run
TASK_SCHEMA = "shard string, samples long, seconds double"
PROGRESS_EVERY_S = 10.0


@dataclasses.dataclass(frozen=True)
class FilterConfig:
    shards: str
    output: str
    eval_sets: tuple[str, ...] = ()
    block_hashes: str | None = None
    block_urls: str | None = None
    nsfw: bool = True
    nsfw_threshold: float = DEFAULT_THRESHOLD
    blur_faces: bool = True
    near_duplicate_bits: int = hashes.DEFAULT_NEAR_DUPLICATE_BITS
    overwrite: bool = False

    def __post_init__(self):
        if not 0.0 <= self.nsfw_threshold <= 1.0:
            raise FilterError(f"--nsfw-threshold must be in [0, 1], got {self.nsfw_threshold}")
        if not 0 <= self.near_duplicate_bits < hashes.PDQ_BITS:
            raise FilterError(
                f"--near-duplicate-bits must be in [0, {hashes.PDQ_BITS}), "
                f"got {self.near_duplicate_bits}"
            )
        if self.shards.rstrip("/") == self.output.rstrip("/"):
            raise FilterError("--output must not be the --shards folder")


@dataclasses.dataclass
class FilterReport:
    manifest: dict
    analyzed: list[str]  # shards analyzed by this run (the others were done before)
    written: list[str]  # output shards (re)written by this run

    def summary(self) -> str:
        m = self.manifest
        drops = ", ".join(f"{k} {v}" for k, v in m["drops"].items()) or "none"
        return (
            f"[filter] kept {m['kept']} of {m['input_samples']} samples in {m['shards']} "
            f"shards ({len(self.written)} written this run); dropped {drops}; "
            f"faces blurred in {m['blurred_images']} images"
        )


def run(config: FilterConfig, spark=None, log=print) -> FilterReport:
    started = time.perf_counter()
    out = config.output.rstrip("/")
    try:
        tables.check_writable(out)
    except (OSError, pa.ArrowException) as error:
        raise FilterError(f"cannot write to output {out}: {error}") from None
    if config.overwrite:
        for folder in (ANALYSIS_DIR, "image_filter", "shards"):
            tables.delete(f"{out}/{folder}")
    shard_uris = list_shards(config.shards)
    hash_list = blocklists.read_hash_list(config.block_hashes) if config.block_hashes else None
    url_list = blocklists.read_url_list(config.block_urls) if config.block_urls else None
    evals = evalsets.hash_eval_sets(list(config.eval_sets)) if config.eval_sets else None
    if evals is not None:
        log(f"[filter] {len(evals)} evaluation images hashed from {len(config.eval_sets)} set(s)")
    spark = spark or get_spark("filter_images")

    analyzed = analyze_shards(spark, config, shard_uris, log)
    analysis = read_analysis(out, shard_uris)
    rules = Rules(
        nsfw_threshold=config.nsfw_threshold if config.nsfw else None,
        near_duplicate_bits=config.near_duplicate_bits,
        hash_list=hash_list or blocklists.HashList(),
        url_list=url_list or blocklists.UrlList(),
    )
    decisions = decide(analysis, rules, evals)
    table = decisions.table
    tables.start_table(f"{out}/image_filter")
    tables.write_parquet(f"{out}/image_filter/part-00000.parquet", [table])
    tables.write_success(f"{out}/image_filter")

    written = write_shards(spark, config, shard_uris, table, log)
    manifest = summarize(config, shard_uris, table, decisions.contamination)
    manifest["seconds"] = round(time.perf_counter() - started, 1)
    tables.write_text(f"{out}/shards/manifest.json", json.dumps(manifest, indent=2))
    report = FilterReport(manifest, analyzed, written)
    log(report.summary() + f" in {manifest['seconds']}s")
    return report


# ---------------------------------------------------------------- input


def list_shards(folder: str) -> dict[str, str]:
    """Shard name (the tar's base name without .tar) -> URI, for every tar of the folder."""
    try:
        tars = tables.list_files(folder, ".tar")
    except FileNotFoundError:
        raise FilterError(f"--shards {folder} does not exist") from None
    if not tars:
        raise FilterError(f"--shards {folder}: no .tar shards found")
    return {posixpath.basename(t)[:-4]: t for t in tars}


def _shard_frame(spark, names: list[str]):
    """A DataFrame of shard names, one per partition (so one task per shard)."""
    keys = hashing.partition_keys(len(names))
    frame = spark.createDataFrame(pa.table({"shard": names, "key": keys}))
    return frame.repartition(len(names), "key").drop("key")


def _progress(count_done, total: int, label: str, log):
    """A thread that logs `label k/total` every PROGRESS_EVERY_S while the tasks run."""
    stop = threading.Event()

    def report():
        while not stop.wait(PROGRESS_EVERY_S):
            log(f"[filter] {label} {count_done()}/{total} shards")

    thread = threading.Thread(target=report, daemon=True)
    thread.start()
    return stop


def _done_markers(folder: str, suffix: str) -> int:
    return len(tables.list_files(folder, suffix, missing_ok=True))


def _run_per_shard(spark, names: list[str], work, markers: tuple[str, str], total: int, label, log):
    """`work(name)` (returns the samples it handled) as one Spark task per shard of `names`,
    with a progress line every PROGRESS_EVERY_S counting the done markers (folder, suffix)."""

    def task(batches):
        for batch in batches:
            for name in batch.column("shard").to_pylist():
                started = time.perf_counter()
                samples = work(name)
                yield pa.record_batch(
                    [
                        pa.array([name]),
                        pa.array([samples], pa.int64()),
                        pa.array([time.perf_counter() - started]),
                    ],
                    names=["shard", "samples", "seconds"],
                )

    stop = _progress(lambda: _done_markers(*markers), total, label, log)
    try:
        _shard_frame(spark, names).mapInArrow(task, TASK_SCHEMA).collect()
    finally:
        stop.set()


# ---------------------------------------------------------------- 1. analyze


def analysis_fingerprint(config: FilterConfig, uri: str, code_version: str) -> str:
    """What an analysis depends on: the input tar (name and size), which models ran, and the
    code (`tables.code_version()`, computed once per run: it reads every source file)."""
    fs, path = tables.filesystem(uri)
    size = fs.get_file_info(path).size
    parts = [posixpath.basename(path), size, config.nsfw, config.blur_faces, code_version]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def analyze_shards(spark, config: FilterConfig, shard_uris: dict[str, str], log) -> list[str]:
    out = config.output.rstrip("/")
    folder = f"{out}/{ANALYSIS_DIR}"
    version = tables.code_version()
    fingerprints = {
        name: analysis_fingerprint(config, uri, version) for name, uri in shard_uris.items()
    }
    todo = [
        name
        for name in shard_uris
        if tables.read_text(f"{folder}/{name}.done") != fingerprints[name]
    ]
    before = len(shard_uris) - len(todo)
    log(f"[filter] analyzing {len(todo)} of {len(shard_uris)} shards ({before} done before)")
    if not todo:
        return []
    nsfw_on, faces_on = config.nsfw, config.blur_faces

    def work(name: str) -> int:
        with open_binary(shard_uris[name]) as stream:
            table = analyze.analyze_shard(name, stream, nsfw_on, faces_on)
        tables.write_parquet(f"{folder}/{name}.parquet", [table])
        tables.write_text(f"{folder}/{name}.done", fingerprints[name])
        return table.num_rows

    _run_per_shard(spark, todo, work, (folder, ".done"), len(shard_uris), "analyzed", log)
    log(f"[filter] analyzed {len(todo)} shards ({before} done before)")
    return sorted(todo)


def read_analysis(out: str, shard_uris: dict[str, str]) -> pa.Table:
    pieces = []
    for name in shard_uris:
        fs, path = tables.filesystem(f"{out}/{ANALYSIS_DIR}/{name}.parquet")
        with fs.open_input_file(path) as handle:
            pieces.append(pq.read_table(handle).cast(analyze.ANALYSIS_SCHEMA))
    return pa.concat_tables(pieces)


# ---------------------------------------------------------------- 3. write


def kept_by_shard(table: pa.Table, blur: bool) -> dict[str, dict[str, list | None]]:
    kept: dict[str, dict[str, list | None]] = {}
    rows = table.select(["shard", "key", "decision", "face_boxes"]).to_pylist()
    for row in rows:
        if row["decision"] == "keep":
            kept.setdefault(row["shard"], {})[row["key"]] = row["face_boxes"] if blur else None
    return kept


def shard_digest(kept: dict[str, list | None]) -> str:
    return hashlib.sha256(json.dumps(sorted(kept.items())).encode()).hexdigest()


def write_shards(spark, config, shard_uris, table: pa.Table, log) -> list[str]:
    folder = f"{config.output.rstrip('/')}/shards"
    kept = kept_by_shard(table, config.blur_faces)
    digests = {name: shard_digest(kept.get(name, {})) for name in shard_uris}

    def marker(name: str) -> dict | None:
        text = tables.read_text(f"{folder}/{name}_filter.json")
        return json.loads(text) if text else None

    todo = [name for name in shard_uris if (marker(name) or {}).get("digest") != digests[name]]
    log(f"[filter] writing {len(todo)} of {len(shard_uris)} shards")
    if not todo:
        return []
    wanted = {name: kept.get(name, {}) for name in todo}

    def work(name: str) -> int:
        keys, count = wanted[name], 0
        tables.delete(f"{folder}/{name}_filter.json")
        if keys:
            with open_binary(shard_uris[name]) as stream:
                with tables.published(f"{folder}/{name}.tar") as sink:
                    meta = rewrite_shard(stream, sink, keys)
            tables.write_parquet(f"{folder}/{name}.parquet", [meta])
            count = meta.num_rows
        else:  # nothing kept: no tar (a reader would open an empty one)
            tables.delete(f"{folder}/{name}.tar")
            tables.delete(f"{folder}/{name}.parquet")
        done = {"digest": digests[name], "samples": count}
        tables.write_text(f"{folder}/{name}_filter.json", json.dumps(done))
        return count

    markers = (folder, "_filter.json")
    _run_per_shard(spark, todo, work, markers, len(shard_uris), "written", log)
    return sorted(todo)


# ---------------------------------------------------------------- 4. summarize


def _input_source(shards: str) -> dict:
    """The input shards' manifest `source` (the curation run, the pool kind), carried over so
    that what reads the filtered shards (the trainer's --online-curation) still finds it."""
    text = tables.read_text(f"{shards.rstrip('/')}/manifest.json")
    try:
        return dict(json.loads(text).get("source") or {}) if text else {}
    except (ValueError, AttributeError):
        return {}


def summarize(config: FilterConfig, shard_uris, table: pa.Table, contamination: list) -> dict:
    folder = f"{config.output.rstrip('/')}/shards"
    decisions = table.select(["shard", "decision", "reason", "face_boxes"]).to_pylist()
    kept = Counter(r["shard"] for r in decisions if r["decision"] == "keep")
    sizes = {f"{name}.tar": kept[name] for name in shard_uris if kept[name]}
    drops = Counter(r["reason"] for r in decisions if r["decision"] == "drop")
    blurred = (
        sum(1 for r in decisions if r["decision"] == "keep" and r["face_boxes"])
        if config.blur_faces
        else 0
    )
    tables.write_text(f"{folder}/sizes.json", json.dumps(sizes, indent=2))
    return {
        "total_samples": sum(sizes.values()),
        "shards": len(sizes),
        "input_samples": table.num_rows,
        "kept": sum(kept.values()),
        "drops": dict(sorted(drops.items())),
        "blurred_images": blurred,
        "eval_contamination": contamination,
        "source": {**_input_source(config.shards), "filtered_from": config.shards},
        "config": {
            "eval_sets": list(config.eval_sets),
            "block_hashes": config.block_hashes,
            "block_urls": config.block_urls,
            "nsfw": config.nsfw,
            "nsfw_threshold": config.nsfw_threshold,
            "blur_faces": config.blur_faces,
            "near_duplicate_bits": config.near_duplicate_bits,
            "pdq_min_quality": hashes.PDQ_MIN_QUALITY,
            "blocklist_pdq_bits": hashes.BLOCKLIST_PDQ_BITS,
        },
    }
