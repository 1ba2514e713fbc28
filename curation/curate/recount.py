"""`--recount-from SHARDS`: curate again on the images that actually downloaded (and survived
the image filter), so that head and tail are decided on real images (docs/semantics.md,
section 10).

The shards' per-shard Parquet files (img2dataset's `NNNNN.parquet`, with a `status` column, or
the image filter's, whose rows are all kept samples) name the surviving images by uid. The run
then treats exactly the input records of those images as its input: every rule after that is
the same, so its entry counts, thresholds and kept set are what the semantics give for the
surviving images.
"""

from __future__ import annotations

import json
import posixpath

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curation.core import tables
from curation.core.jobs import CurationError

_survivors: dict[str, pa.Array] = {}  # per Python worker: the set each task filters with


def surviving_uids(shards: str) -> pa.Array:
    """The sorted distinct uids of the samples the shard folder holds."""
    try:
        files = tables.list_files(shards, ".parquet")
    except FileNotFoundError:
        raise CurationError(f"--recount-from {shards} does not exist") from None
    if not files:
        raise CurationError(f"--recount-from {shards}: no shard metadata (NNNNN.parquet) found")
    pieces = []
    for file in files:
        fs, path = tables.filesystem(file)
        with fs.open_input_file(path) as handle:
            table = pq.read_table(handle)
        if "uid" not in table.column_names:
            raise CurationError(f"--recount-from: {posixpath.basename(file)} has no uid column")
        uids = table["uid"].cast(pa.string())
        if "status" in table.column_names:
            uids = uids.filter(pc.equal(table["status"], "success"))
        pieces.append(uids.drop_null())
    return pc.unique(pa.chunked_array(pieces, pa.string())).sort()


def write_survivors(uri: str, uids: pa.Array) -> None:
    tables.write_parquet(uri, [pa.table({"uid": uids})], plain=("uid",))


def only_survivors(records: pa.Table, survivors_uri: str) -> pa.Table:
    """The records whose uid is one of the surviving images (read once per worker)."""
    if survivors_uri not in _survivors:
        fs, path = tables.filesystem(survivors_uri)
        with fs.open_input_file(path) as handle:
            _survivors[survivors_uri] = pq.read_table(handle)["uid"].combine_chunks()
    return records.filter(pc.is_in(records["uid"], value_set=_survivors[survivors_uri]))


def before(shards: str) -> dict:
    """The run the shards were exported from (their manifest's source.run_dir) as it decided
    before download: {run_dir, t: {lang: t}, curated: {lang: kept}}; {} when unknown."""
    text = tables.read_text(f"{shards.rstrip('/')}/manifest.json")
    source = (json.loads(text) if text else {}).get("source") or {}
    run_dir = source.get("run_dir")
    if not run_dir or not tables.exists(f"{run_dir}/thresholds"):
        return {}
    thresholds = tables.read_arrow(f"{run_dir}/thresholds", ["lang", "t"])
    run = json.loads(tables.read_text(f"{run_dir}/run.json") or "{}")
    return {
        "run_dir": run_dir,
        "t": dict(zip(thresholds["lang"].to_pylist(), thresholds["t"].to_pylist())),
        "curated": run.get("counts", {}).get("curated_per_lang", {}),
    }
