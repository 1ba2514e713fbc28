"""Small WebDataset shards in the `make shards` layout, built from real photographs.

Images: the CC0 pictures bundled with scikit-image, cut into deterministic random crops.
Captions: real CC3M alt-texts from curation/sample_data; every crop of one picture carries
that picture's caption, so a model can learn the pairing within a few steps.
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import webdataset as wds
from PIL import Image

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CAPTIONS = PROJECT_ROOT / "curation" / "sample_data" / "cc3m_val_2k.tsv"


def source_images() -> list[Image.Image]:
    import skimage

    data_dir = Path(skimage.__file__).parent / "data"
    images = []
    for path in sorted(data_dir.glob("*")):
        if path.suffix not in (".png", ".jpg"):
            continue
        image = Image.open(path).convert("RGB")
        if min(image.size) >= 64:
            images.append(image)
    return images


def captions(n: int) -> list[str]:
    with CAPTIONS.open(encoding="utf-8") as f:
        return [line.split("\t", 1)[0].strip() for _, line in zip(range(n), f, strict=False)]


def _jpeg(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def jpeg_kinds(photo: Image.Image) -> dict[str, bytes]:
    """The six kinds of JPEG a data worker meets, by name: baseline 4:2:0 and 4:4:4,
    progressive, greyscale, CMYK, and one whose headers parse but whose scan nothing decodes
    (its quantization tables cut out: libjpeg, PIL and nvJPEG all need the tables the frame
    names). For trainer.data's device triage, in the tests and benchmarks/gpu_check.py."""

    def encode(image: Image.Image, **options) -> bytes:
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=90, **options)
        return buf.getvalue()

    kinds = {
        "baseline 4:2:0": encode(photo),
        "baseline 4:4:4": encode(photo, subsampling=0),
        "progressive": encode(photo, progressive=True),
        "greyscale": encode(photo.convert("L")),
        "cmyk": encode(photo.convert("CMYK")),
    }
    baseline, out, i = kinds["baseline 4:2:0"], bytearray(kinds["baseline 4:2:0"][:2]), 2
    while baseline[i + 1] != 0xDA:  # the segments up to the start of scan, DQT left out
        length = int.from_bytes(baseline[i + 2 : i + 4], "big")
        if baseline[i + 1] != 0xDB:
            out += baseline[i : i + 2 + length]
        i += 2 + length
    kinds["no quantization tables"] = bytes(out + baseline[i:])
    return kinds


def _crop(image: Image.Image, rng: random.Random, size: int) -> Image.Image:
    side = rng.randint(min(image.size) // 3, min(image.size))
    x = rng.randint(0, image.width - side)
    y = rng.randint(0, image.height - side)
    return image.crop((x, y, x + side, y + side)).resize((size, size), Image.BICUBIC)


def make_shards(
    out_dir: Path,
    num_shards: int,
    per_shard: int,
    *,
    seed: int = 0,
    image_size: int = 40,
    first_index: int = 0,
    broken: bool = False,
) -> list[str]:
    """Write {first_index:05d}.tar...; with broken=True shard 0 also holds one sample without
    image, one without text and one truncated JPEG. Returns the good samples' keys."""
    out_dir.mkdir(parents=True, exist_ok=True)
    images = source_images()
    texts = captions(len(images))
    rng = random.Random(seed)
    keys, sizes = [], {}
    for shard in range(first_index, first_index + num_shards):
        name = f"{shard:05d}.tar"
        with wds.TarWriter(str(out_dir / name)) as sink:
            for i in range(per_shard):
                source = rng.randrange(len(images))
                key = f"{shard:05d}{i:04d}"
                meta = {"uid": key, "lang": "en", "entry_ids": [source]}
                sink.write(
                    {
                        "__key__": key,
                        "jpg": _jpeg(_crop(images[source], rng, image_size)),
                        "txt": texts[source],
                        "json": json.dumps(meta),
                    }
                )
                keys.append(key)
            written = per_shard
            if broken and shard == first_index:
                good = _jpeg(_crop(images[0], rng, image_size))
                sink.write({"__key__": f"{shard:05d}b001", "txt": texts[0], "json": "{}"})
                sink.write({"__key__": f"{shard:05d}b002", "jpg": good, "json": "{}"})
                sink.write({"__key__": f"{shard:05d}b003", "jpg": good[:40], "txt": texts[0]})
                written += 3
        sizes[name] = written
    (out_dir / "sizes.json").write_text(json.dumps(sizes, indent=1))
    manifest = {"total_samples": sum(sizes.values()), "languages": {"en": sum(sizes.values())}}
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return keys
