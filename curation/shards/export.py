"""Export a curated table to WebDataset shards with img2dataset.

Steps, each small and separately testable:
1. `read_curated`: the `curated/` table (Parquet partitioned by `lang`, or Delta).
2. `filter_urls`: drop what must never be fetched (non-http(s), private or loopback hosts),
   counting each drop reason; sort by uid so shard contents do not depend on file layout.
3. `write_download_list`: the flat Parquet img2dataset reads (url, caption, uid, lang, entry_ids).
4. `reset_broken_shards` + `run_img2dataset`: incremental download/resize/write of the shards.
5. `summarize`: `sizes.json` (shard -> samples) and `manifest.json` for the trainer.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import ipaddress
import json
import math
import os
import posixpath
import re
import socket
import tarfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curation.core import tables
from curation.core.jobs import ExportError
from curation.core.spark import get_spark
from curation.curate.online import matched_images
from curation.shards import loopback, supervised

CURATED_COLUMNS = ("uid", "url", "text", "lang", "entry_ids")
EXTRA_COLUMNS = ["uid", "lang", "entry_ids"]
POOL_COLUMNS = ["uid", "lang", "candidates"]  # --pool matched: KEY.json carries candidates
LIST_DIR = "_url_list"
# img2dataset's own default: respect noai/noimageai (and the index directives) in X-Robots-Tag.
DEFAULT_DISALLOWED_DIRECTIVES = ("noai", "noimageai", "noindex", "noimageindex")
# Same bound as Pillow's decompression-bomb warning; OpenCV refuses to decode beyond it.
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485
_SHARD_STATS = re.compile(r"^(\d+)_stats\.json$")


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    curated: str
    output: str
    image_size: int = 256
    resize_mode: str = "keep_ratio"
    samples_per_shard: int = 10000
    processes: int = max(1, os.cpu_count() or 1)
    threads: int = 64
    timeout: int = 10
    retries: int = 0
    distributor: str = "multiprocessing"
    user_agent_token: str | None = None
    disallowed_header_directives: tuple[str, ...] = DEFAULT_DISALLOWED_DIRECTIVES
    allow_local: bool = False
    resolve_hosts: bool = False
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    encode_quality: int = 95
    extract_exif: bool = False
    overwrite: bool = False
    require_success: bool = True
    languages: tuple[str, ...] | None = None
    pool: str = "curated"  # or "matched": every matched image with all its texts (online curation)
    # the demo: curated URLs pointed at the photographs of this folder (or "skimage": the ones
    # scikit-image bundles), served on 127.0.0.1 (curation/shards/loopback.py)
    serve_local: str | None = None
    serve_variants: bool = False  # with serve_local: each URL its own variant of a photograph

    def __post_init__(self):
        if self.pool not in ("curated", "matched"):
            raise ExportError(f"--pool must be curated or matched, got {self.pool!r}")
        for name in ("image_size", "samples_per_shard", "processes", "threads", "timeout"):
            if getattr(self, name) < 1:
                raise ExportError(f"--{name.replace('_', '-')} must be at least 1")
        if self.serve_variants and not self.serve_local:
            raise ExportError("--serve-variants needs --serve-local")
        if self.distributor not in ("multiprocessing", "pyspark"):
            raise ExportError(f"unknown distributor {self.distributor!r}")


@dataclasses.dataclass
class ExportReport:
    """What an export did: its manifest (manifest.json) and the shards built by this run."""

    manifest: dict
    built: list[str]


def run(config: ExportConfig, log=print) -> ExportReport:
    """The whole export, behind the loopback server when `config.serve_local` is set. Raises
    ShardsIncomplete when some shards failed (a rerun finishes them)."""
    if config.distributor == "pyspark":
        # img2dataset uses the active session; the env reaches local executors at startup
        os.environ["OPENCV_IO_MAX_IMAGE_PIXELS"] = str(config.max_image_pixels)

        get_spark(
            "export_shards",
            conf={"spark.executorEnv.OPENCV_IO_MAX_IMAGE_PIXELS": str(config.max_image_pixels)},
        )
    try:
        if config.serve_local:
            folder = config.serve_local
            if folder == "skimage":
                folder = str(loopback.bundled_photo_dir())
            names = loopback.image_names(folder)
            variants = names if config.serve_variants else None
            with loopback.serve_directory(folder, variants_of=variants) as base:
                manifest, built = export_shards(
                    config,
                    url_rewrite=lambda t: loopback.localize_urls(
                        t, base, names, config.serve_variants
                    ),
                    log=log,
                )
        else:
            manifest, built = export_shards(config, log=log)
    except OSError as error:  # an input or output the export cannot reach: bad input, exit 2
        if error.errno in (errno.ENOSPC, errno.EDQUOT):  # a full disk is a failure, exit 1
            raise
        raise ExportError(str(error)) from None
    if manifest["incomplete_shards"]:
        raise ShardsIncomplete(
            f"{len(manifest['incomplete_shards'])} shard(s) failed "
            f"({', '.join(manifest['incomplete_shards'][:5])}...); rerun the same command "
            "to finish them"
        )
    return ExportReport(manifest, built)


class ShardsIncomplete(ExportError):
    exit_code = 1


# ---------------------------------------------------------------- 1. read


def _fs_and_path(uri: str):
    """fsspec's filesystem for the output and the path on it, with no listing cached from
    before: img2dataset writes the shards from other processes, and s3fs reuses one instance
    (and its directory cache) per set of arguments, so a cached listing would hide them."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(uri)
    fs.invalidate_cache()
    return fs, path


def read_curated(
    uri: str, require_success: bool = True, languages: tuple[str, ...] | None = None
) -> tuple[pa.Table, dict | None]:
    """The curated pairs (of `languages` only, when given: only those `lang=` partitions are
    read) and the producing run's `run.json` (None when absent)."""
    if not tables.exists(uri):
        raise ExportError(f"curated table not found: {uri}")
    if tables.exists(f"{uri.rstrip('/')}/curated"):
        raise ExportError(
            f"{uri} is a curation run's folder: pass its curated/ table, {uri.rstrip('/')}/curated"
        )
    is_delta = tables.is_delta(uri)
    if require_success and not is_delta and not tables.has_success(uri):
        raise ExportError(
            f"{uri} has no _SUCCESS marker: the curation run is incomplete "
            "(pass --allow-incomplete to export it anyway)"
        )
    import pyarrow.dataset as ds

    if is_delta:
        dataset = tables.dataset(uri)
    else:
        fs, path = tables.filesystem(uri)
        dataset = ds.dataset(
            path,
            filesystem=fs,
            format="parquet",
            partitioning="hive",
            exclude_invalid_files=True,
        )
    missing = [c for c in CURATED_COLUMNS if c not in dataset.schema.names]
    if missing:
        raise ExportError(f"{uri} lacks column(s) {', '.join(missing)} (schema: {dataset.schema})")
    if "keep_prob" not in dataset.schema.names or "chosen" in dataset.schema.names:
        raise ExportError(
            f"{uri} is not a curated/ table (its rows carry keep_prob; matches/ carries chosen, "
            "every candidate text, and is exported with --pool matched)"
        )
    row_filter = ds.field("lang").isin(list(languages)) if languages else None
    table = dataset.to_table(columns=list(CURATED_COLUMNS), filter=row_filter)
    return _normalize_types(table), _read_run(uri, require_success)


def read_pool(
    curated_uri: str, require_success: bool = True, languages: tuple[str, ...] | None = None
) -> tuple[pa.Table, dict | None]:
    """--pool matched: one row per matched image of the run that wrote `curated_uri`, from its
    `matches/` (uid, url, text of the first candidate, its lang, and `candidates`: a JSON list
    of {text, lang, entry_ids} of every distinct matched text, in text order)."""
    run_dir = _parent(curated_uri)
    matches = f"{run_dir}/matches"
    if not tables.exists(matches):
        raise ExportError(f"--pool matched needs the run's matches/ table, not found: {matches}")
    run = _read_run(f"{run_dir}/curated", require_success)
    images = matched_images(run_dir, languages)
    candidates = [
        [{"text": c.text, "lang": c.lang, "entry_ids": list(c.entry_ids)} for c in cands]
        for _, _, cands in images
    ]
    pool = pa.table(
        {
            "uid": pa.array([uid for uid, _, _ in images], pa.string()),
            "url": pa.array([url for _, url, _ in images], pa.string()),
            "text": pa.array([c[0]["text"] for c in candidates], pa.string()),
            "lang": pa.array([c[0]["lang"] for c in candidates], pa.string()),
            "entry_ids": pa.array([c[0]["entry_ids"] for c in candidates], pa.list_(pa.int32())),
            "candidates": pa.array(
                [json.dumps(c, ensure_ascii=False) for c in candidates], pa.string()
            ),
        }
    )
    return pool, run


def _parent(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[0]


def _read_run(uri: str, require_success: bool) -> dict | None:
    """jobs/curate.py writes run.json and _SUCCESS next to curated/ when the whole run is done."""
    run_dir = _parent(uri)
    if require_success and tables.exists(f"{run_dir}/_stages") and not tables.has_success(run_dir):
        raise ExportError(
            f"the curation run in {run_dir} has not finished (no _SUCCESS): "
            "rerun it, or pass --allow-incomplete"
        )
    for folder in (uri.rstrip("/"), run_dir):
        text = tables.read_text(f"{folder}/run.json")
        if text is not None:
            return json.loads(text)
    return None


def _normalize_types(table: pa.Table) -> pa.Table:
    """Hive partition values come back dictionary-encoded; entry ids may be any int width."""
    return pa.table(
        {
            "uid": table["uid"].cast(pa.string()),
            "url": table["url"].cast(pa.string()),
            "text": table["text"].cast(pa.string()),
            "lang": table["lang"].cast(pa.string()),
            "entry_ids": table["entry_ids"].cast(pa.list_(pa.int64())),
        }
    )


# ---------------------------------------------------------------- 2. filter


def url_drop_reason(url: str | None, allow_local: bool = False) -> str | None:
    """Why a URL must not be fetched, or None. Literal addresses only: no DNS lookups here."""
    if not url or not isinstance(url, str) or not url.strip():
        return "empty_url"
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname
    except ValueError:
        return "malformed_url"
    if parts.scheme.lower() not in ("http", "https"):
        return "unsupported_scheme"
    if not host:
        return "missing_host"
    if allow_local:
        return None
    if host == "localhost" or host.endswith((".localhost", ".local", ".internal")):
        return "private_address"
    address = _literal_address(host)
    if address is not None and not _is_public(address):
        return "private_address"
    return None


def _literal_address(host: str):
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    # Legacy IPv4 spellings the resolver still accepts: 127.1, 0x7f000001, 2130706433.
    if re.fullmatch(r"[0-9a-fx.]+", host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def _is_public(address) -> bool:
    mapped = getattr(address, "ipv4_mapped", None)
    if mapped is not None:
        address = mapped
    return address.is_global and not address.is_multicast


def host_drop_reasons(hosts: set[str], threads: int = 64) -> dict[str, str]:
    """Resolve each host once: hosts that do not resolve, or resolve to any non-public address
    (internal DNS names, metadata endpoints behind a name), mapped to their drop reason."""

    def check(host: str) -> str | None:
        try:
            infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
        except (OSError, UnicodeError):
            return "unresolvable_host"
        addresses = {ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos}
        return None if all(_is_public(a) for a in addresses) else "private_address"

    with ThreadPoolExecutor(threads) as pool:
        reasons = dict(zip(hosts, pool.map(check, sorted(hosts))))
    return {host: reason for host, reason in reasons.items() if reason is not None}


def filter_urls(
    table: pa.Table, allow_local: bool = False, resolve_hosts: bool = False
) -> tuple[pa.Table, Counter]:
    """Keep the fetchable rows, sorted by uid (deterministic shards); count the drop reasons."""
    urls = table["url"].to_pylist()
    reasons = [url_drop_reason(url, allow_local) for url in urls]
    if resolve_hosts and not allow_local:
        hosts = [urlsplit(u.strip()).hostname if r is None else None for u, r in zip(urls, reasons)]
        bad_hosts = host_drop_reasons({h for h in hosts if h})
        reasons = [r or bad_hosts.get(h) for r, h in zip(reasons, hosts)]
    drops = Counter(r for r in reasons if r is not None)
    kept = table.filter(pa.array([r is None for r in reasons], pa.bool_()))
    uids = kept["uid"]
    if uids.null_count:
        raise ExportError(f"{uids.null_count} curated rows have no uid")
    kept = kept.take(pc.sort_indices(kept, sort_keys=[("uid", "ascending"), ("url", "ascending")]))
    return kept, drops


# ---------------------------------------------------------------- 3. download list


def download_list(table: pa.Table) -> pa.Table:
    columns = {
        "url": table["url"],
        "caption": table["text"],
        "uid": table["uid"],
        "lang": table["lang"],
        "entry_ids": table["entry_ids"],
    }
    if "candidates" in table.column_names:
        columns["candidates"] = table["candidates"]
    return pa.table(columns)


def list_digest(table: pa.Table) -> str:
    """Identity of a download list: its uids and captions in order (not the URLs, which
    --serve-local rewrites to a new port on every run)."""
    digest = hashlib.sha256()
    for batch in table.select(["uid", "caption"]).to_batches(max_chunksize=65536):
        for column in batch.columns:
            for value in column.to_pylist():
                digest.update((value or "").encode())
                digest.update(b"\0")
    return digest.hexdigest()


def write_download_list(table: pa.Table, output: str, overwrite: bool = False) -> dict:
    """Write `output/_url_list/`; a rerun must bring the same list (or --overwrite), so shard
    N of the rerun holds the same rows as shard N of the first run."""
    fs, out = _fs_and_path(output)
    list_dir = posixpath.join(out, LIST_DIR)
    info_path = posixpath.join(list_dir, "_list.json")
    info = {"rows": table.num_rows, "digest": list_digest(table)}
    if overwrite and fs.exists(out):
        fs.rm(out, recursive=True)
    if fs.exists(info_path):
        with fs.open(info_path, "r") as f:
            previous = json.load(f)
        if previous["digest"] != info["digest"]:
            raise ExportError(
                f"{output} holds shards of a different curated input "
                f"({previous['rows']} rows vs {info['rows']}): use a new OUT or --overwrite"
            )
    fs.makedirs(list_dir, exist_ok=True)
    list_path = posixpath.join(list_dir, "part-00000.parquet")
    with fs.open(list_path + ".tmp", "wb") as f:
        pq.write_table(table, f)
    fs.mv(list_path + ".tmp", list_path)
    _write_json(fs, info_path, info)
    return info


# ---------------------------------------------------------------- 4. img2dataset


def reset_broken_shards(output: str) -> list[str]:
    """Make img2dataset redo shards whose .tar or .parquet is gone, or whose tar is cut short.

    img2dataset treats a shard as done when its `_stats.json` exists, and it would choke on our
    own top-level json files; both are removed here (summarize rewrites them).
    """
    fs, out = _fs_and_path(output)
    if not fs.exists(out):
        return []
    for name in ("manifest.json", "sizes.json"):
        if fs.exists(posixpath.join(out, name)):
            fs.rm(posixpath.join(out, name))
    reset = []
    for stats in sorted(fs.glob(posixpath.join(out, "*_stats.json"))):
        shard = posixpath.basename(stats).split("_")[0]
        files = [posixpath.join(out, f"{shard}.{ext}") for ext in ("tar", "parquet")]
        if not all(fs.exists(p) for p in files) or not _tar_complete(fs, files[0], stats):
            for p in [stats, *files]:
                if fs.exists(p):
                    fs.rm(p)
            reset.append(shard)
    return reset


def _tar_complete(fs, tar_path: str, stats_path: str) -> bool:
    """Whether a shard's tar is whole: its size a multiple of 512 bytes ending in the two zero
    blocks a finished tar has (a copy or write cut short does not), and, for a local shard, as
    many samples as its stats file says img2dataset wrote."""
    size = fs.size(tar_path)
    if size < 1024 or size % 512:
        return False
    with fs.open(tar_path, "rb") as f:
        f.seek(size - 1024)
        if f.read(1024).strip(b"\0"):
            return False
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    if "file" not in protocols:  # an object store: reading every shard again costs too much
        return True
    with fs.open(stats_path, "r") as f:
        successes = json.load(f).get("successes")
    try:
        with tarfile.open(tar_path) as tar:
            keys = {m.name.split(".", 1)[0] for m in tar if m.isfile()}
    except (tarfile.TarError, OSError, EOFError):
        return False
    return successes is None or len(keys) == successes


def run_img2dataset(list_uri: str, config: ExportConfig) -> None:
    """img2dataset over the download list. With the multiprocessing distributor it runs in a
    child whose worker processes die with this driver (curation/shards/supervised.py)."""
    # Spawned workers inherit these: OpenCV refuses decompression bombs before allocating,
    # and albumentations skips its network version check.
    os.environ["OPENCV_IO_MAX_IMAGE_PIXELS"] = str(config.max_image_pixels)
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    if config.distributor == "multiprocessing":
        supervised.run_in_group(_download, list_uri, config)
    else:  # pyspark: the tasks belong to the Spark application, which Spark cleans up
        _download(list_uri, config)


def _download(list_uri: str, config: ExportConfig) -> None:
    from img2dataset import download

    download(
        url_list=list_uri,
        output_folder=config.output,
        input_format="parquet",
        url_col="url",
        caption_col="caption",
        save_additional_columns=list(POOL_COLUMNS if config.pool == "matched" else EXTRA_COLUMNS),
        output_format="webdataset",
        image_size=config.image_size,
        resize_mode=config.resize_mode,
        encode_quality=config.encode_quality,
        processes_count=config.processes,
        thread_count=config.threads,
        number_sample_per_shard=config.samples_per_shard,
        timeout=config.timeout,
        retries=config.retries,
        distributor=config.distributor,
        incremental_mode="incremental",
        extract_exif=config.extract_exif,
        max_image_area=float(config.max_image_pixels),
        user_agent_token=config.user_agent_token,
        disallowed_header_directives=list(config.disallowed_header_directives),
        enable_wandb=False,
    )


# ---------------------------------------------------------------- 5. summarize

_REASON_PATTERNS = (
    ("x_robots_tag", "X-Robots-Tag"),
    ("timeout", "timed out"),
    ("image_too_large", "CV_IO_MAX_IMAGE_PIXELS"),
    ("image_too_large", "image area too large"),
    ("decode_error", "Image decoding error"),
    ("connection_error", "urlopen error"),
    ("incomplete_read", "IncompleteRead"),
)


def reason_category(message: str) -> str:
    """A short, stable name for one of img2dataset's error messages."""
    match = re.match(r"HTTP Error (\d+)", message)
    if match:
        return f"http_{match.group(1)}"
    for category, needle in _REASON_PATTERNS:
        if needle in message:
            return category
    return "other"


def expected_shards(rows: int, samples_per_shard: int) -> list[str]:
    return [f"{i:05d}" for i in range(math.ceil(rows / samples_per_shard))]


def summarize(
    config: ExportConfig, list_info: dict, drops: Counter, input_rows: int, run: dict | None
) -> dict:
    """Write sizes.json and manifest.json from the shards' parquet and stats files."""
    fs, out = _fs_and_path(config.output)
    shards = expected_shards(list_info["rows"], config.samples_per_shard)
    sizes, languages, raw_reasons = {}, Counter(), Counter()
    totals = Counter()
    missing = []
    for shard in shards:
        stats_path = posixpath.join(out, f"{shard}_stats.json")
        if not fs.exists(stats_path):
            missing.append(shard)
            continue
        with fs.open(stats_path, "r") as f:
            stats = json.load(f)
        for key in ("count", "successes", "failed_to_download", "failed_to_resize"):
            totals[key] += stats[key]
        raw_reasons.update(
            {k.strip(): v for k, v in stats["status_dict"].items() if k != "success"}
        )
        with fs.open(posixpath.join(out, f"{shard}.parquet"), "rb") as f:
            meta = pq.read_table(f, columns=["status", "lang"])
        ok = meta.filter(pc.equal(meta["status"], "success"))
        sizes[f"{shard}.tar"] = ok.num_rows
        languages.update(ok["lang"].to_pylist())
    categories = Counter()
    for message, count in raw_reasons.items():
        categories[reason_category(message)] += count
    manifest = {
        "total_samples": sum(sizes.values()),
        "shards": len(sizes),
        "languages": dict(sorted(languages.items())),
        "source": {
            "curated": config.curated,
            "pool": config.pool,
            "run": run,
            "run_dir": posixpath.dirname(config.curated.rstrip("/")),
            "url_list": list_info,
        },
        "input_rows": input_rows,
        "url_filter_drops": dict(sorted(drops.items())),
        "download": {
            "attempted": totals["count"],
            "successes": totals["successes"],
            "failed_to_download": totals["failed_to_download"],
            "failed_to_resize": totals["failed_to_resize"],
            "failure_categories": dict(sorted(categories.items())),
            "failure_reasons": dict(sorted(raw_reasons.items())),
        },
        "incomplete_shards": missing,
        "config": {
            "image_size": config.image_size,
            "resize_mode": config.resize_mode,
            "samples_per_shard": config.samples_per_shard,
            "timeout": config.timeout,
            "retries": config.retries,
            "user_agent_token": config.user_agent_token,
            "disallowed_header_directives": list(config.disallowed_header_directives),
            "allow_local": config.allow_local,
            "resolve_hosts": config.resolve_hosts,
            "max_image_pixels": config.max_image_pixels,
        },
    }
    _write_json(fs, posixpath.join(out, "sizes.json"), sizes)
    _write_json(fs, posixpath.join(out, "manifest.json"), manifest)
    return manifest


def _write_json(fs, path: str, value) -> None:
    tmp = path + ".tmp"
    with fs.open(tmp, "w") as f:
        json.dump(value, f, indent=2, sort_keys=False)
    fs.mv(tmp, path)


# ---------------------------------------------------------------- the whole export


def export_shards(config: ExportConfig, url_rewrite=None, log=print) -> tuple[dict, list[str]]:
    """Run every step; returns the manifest and the shards that were rebuilt from scratch."""
    started = time.perf_counter()
    read = read_pool if config.pool == "matched" else read_curated
    table, run = read(config.curated, config.require_success, config.languages)
    only = f" (languages {','.join(config.languages)})" if config.languages else ""
    what = "matched images (pool)" if config.pool == "matched" else "curated rows"
    log(f"[shards] read {table.num_rows} {what} from {config.curated}{only}")
    if url_rewrite is not None:
        table = url_rewrite(table)
    kept, drops = filter_urls(table, config.allow_local, config.resolve_hosts)
    log(f"[shards] {kept.num_rows} fetchable, dropped {dict(drops) or 'none'}")
    if kept.num_rows == 0:
        raise ExportError(f"nothing to fetch in {config.curated} (drops: {dict(drops)})")
    listing = download_list(kept)
    info = write_download_list(listing, config.output, config.overwrite)
    reset = reset_broken_shards(config.output)
    if reset:
        log(f"[shards] redoing shard(s) with missing files: {', '.join(reset)}")
    fs, out = _fs_and_path(config.output)
    list_uri = config.output.rstrip("/") + f"/{LIST_DIR}/part-00000.parquet"
    done_before = {
        posixpath.basename(p).split("_")[0] for p in fs.glob(posixpath.join(out, "*_stats.json"))
    }
    expected = set(expected_shards(info["rows"], config.samples_per_shard))
    if expected - done_before:
        run_img2dataset(list_uri, config)
    else:
        log("[shards] every shard is already done")
    manifest = summarize(config, info, drops, table.num_rows, run)
    built = sorted(expected - done_before - set(manifest["incomplete_shards"]))
    log(
        f"[shards] {manifest['total_samples']} samples in {manifest['shards']} shards "
        f"({len(built)} built this run) in {time.perf_counter() - started:.1f}s; "
        f"failures {manifest['download']['failure_categories'] or 'none'}"
    )
    return manifest, built
