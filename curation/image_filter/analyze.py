"""What the filter knows of each sample, computed once per shard (the expensive part: decoding,
hashing, the NSFW model and the face detector), so that the global decisions that follow
(de-duplication across shards, evaluation sets, blocklists) never touch an image again."""

from __future__ import annotations

import io
import time

import numpy as np
import pyarrow as pa
from PIL import Image

from curation.image_filter import faces, hashes, nsfw
from curation.image_filter.samples import image_of, iter_samples, meta_text, metadata_of

ANALYSIS_SCHEMA = pa.schema(
    [
        ("shard", pa.string()),
        ("key", pa.string()),
        ("uid", pa.string()),
        ("url", pa.string()),
        ("sha256", pa.string()),
        ("md5", pa.string()),
        ("pdq", pa.string()),
        ("pdq_quality", pa.int32()),
        ("phash", pa.string()),
        ("nsfw_score", pa.float32()),
        ("face_boxes", pa.list_(pa.list_(pa.int32()))),
        ("error", pa.string()),
    ]
)
STEPS = ("decode", "hash", "nsfw", "faces")


def analyze_sample(
    members: dict[str, bytes], nsfw_on: bool, faces_on: bool, seconds: dict | None = None
) -> dict:
    """One row of ANALYSIS_SCHEMA (without shard and key) for a sample's members; an image
    that cannot be decoded gets `error` and no hashes beyond the byte digests."""
    meta = metadata_of(members)
    row = {"uid": meta_text(meta, "uid"), "url": meta_text(meta, "url")}
    ext, data = image_of(members)
    if data is None:
        return row | {"error": "no_image"}
    clock = _Clock(seconds)
    row |= {"sha256": hashes.sha256_hex(data), "md5": hashes.md5_hex(data)}
    try:
        with Image.open(io.BytesIO(data)) as image:
            image = image.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        return row | {"error": f"decode_error: {type(error).__name__}"}
    rgb = np.asarray(image)
    clock.lap("decode")
    row["pdq"], row["pdq_quality"] = hashes.pdq(rgb)
    row["phash"] = hashes.phash(image)
    clock.lap("hash")
    if nsfw_on:
        row["nsfw_score"] = nsfw.nsfw_score(rgb)
        clock.lap("nsfw")
    if faces_on:
        row["face_boxes"] = faces.detect_faces(rgb)
        clock.lap("faces")
    return row


def analyze_shard(
    shard: str, stream, nsfw_on: bool, faces_on: bool, seconds: dict | None = None
) -> pa.Table:
    rows = []
    for key, members in iter_samples(stream):
        row = analyze_sample(members, nsfw_on, faces_on, seconds)
        rows.append({"shard": shard, "key": key, **row})
    return pa.Table.from_pylist(rows, schema=ANALYSIS_SCHEMA)


class _Clock:
    """Seconds per step, added into `seconds` (the benchmark's per-step figures)."""

    def __init__(self, seconds: dict | None):
        self.seconds = seconds
        self.last = time.perf_counter()

    def lap(self, step: str) -> None:
        if self.seconds is not None:
            now = time.perf_counter()
            self.seconds[step] = self.seconds.get(step, 0.0) + now - self.last
            self.last = now
