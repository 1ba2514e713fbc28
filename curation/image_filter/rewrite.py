"""A filtered shard: the kept samples of an input shard, in their order, their members copied
byte for byte except where faces were found. There the image is blurred (faces.blur_faces) and
re-encoded at the input's quality: a JPEG with the input's own quantization tables and chroma
subsampling (what DataComp does with Pillow's quality="keep"), other formats losslessly. The
boxes go into the sample's KEY.json as `face_boxes` ([x0, y0, x1, y1], pixels)."""

from __future__ import annotations

import io
import json
import tarfile

import pyarrow as pa
from PIL import Image, JpegImagePlugin

from curation.image_filter.faces import blur_faces
from curation.image_filter.samples import add_member, image_of, iter_samples, meta_text, metadata_of

META_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("uid", pa.string()),
        ("url", pa.string()),
        ("caption", pa.string()),
        ("lang", pa.string()),
        ("status", pa.string()),
        ("face_count", pa.int32()),
    ]
)


def reencode_blurred(data: bytes, boxes: list[list[int]]) -> bytes:
    """The image bytes with the boxes blurred, in the input's format and quality."""
    with Image.open(io.BytesIO(data)) as source:
        source.load()
        blurred = blur_faces(source.convert("RGB"), boxes)
        if source.mode == "L":
            blurred = blurred.convert("L")
        elif source.mode in ("RGBA", "LA"):
            blurred.putalpha(source.getchannel("A"))
        out = io.BytesIO()
        if source.format == "JPEG":
            blurred.save(
                out,
                "JPEG",
                qtables=source.quantization,
                subsampling=JpegImagePlugin.get_sampling(source),
            )
        elif source.format == "WEBP":
            blurred.save(out, "WEBP", lossless=True)
        else:
            blurred.save(out, "PNG")
    return out.getvalue()


def rewrite_shard(stream, sink, kept: dict[str, list[list[int]] | None]) -> pa.Table:
    """Copy the samples whose key is in `kept` from the tar `stream` to the tar `sink`, blurring
    each one's face boxes (`kept[key]`; None or [] leaves the image as it was). Returns the
    shard's metadata table (META_SCHEMA), one row per sample written."""
    rows = []
    with tarfile.open(fileobj=sink, mode="w|") as tar:
        for key, members in iter_samples(stream):
            if key not in kept:
                continue
            boxes = kept[key] or []
            meta = metadata_of(members)
            if boxes:
                ext, data = image_of(members)
                members[ext] = reencode_blurred(data, boxes)
                meta["face_boxes"] = boxes
                members["json"] = json.dumps(meta, ensure_ascii=False).encode()
            for ext, data in members.items():
                add_member(tar, f"{key}.{ext}", data)
            caption = members.get("txt", b"").decode("utf-8", "replace")
            rows.append(
                {
                    "key": key,
                    "uid": meta_text(meta, "uid"),
                    "url": meta_text(meta, "url"),
                    "caption": caption,
                    "lang": meta_text(meta, "lang"),
                    "status": "success",
                    "face_count": len(boxes),
                }
            )
    return pa.Table.from_pylist(rows, schema=META_SCHEMA)
