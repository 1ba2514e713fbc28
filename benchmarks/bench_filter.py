"""Image filter throughput per core, per step and for the whole stage, and the measurements
behind its choices (which perceptual hash, which threshold, which face detector).

Throughput (default sections `steps,stage`), on the demo's images (`loopback.variant_image`:
256-px JPEGs made from scikit-image's bundled photographs, one per URL):
- steps: our wrappers (curation/image_filter: hashes.pdq, nsfw.nsfw_score, faces.detect_faces)
  against the same libraries called as their own docs show (`pdqhash.compute`,
  `nudenet.NudeDetector().detect`, dlib's `get_frontal_face_detector()(image, 1)`), one core.
- stage: `jobs/filter_images.py`'s `run` on a one-core local Spark session (analyze, decide,
  rewrite, summarize; exact de-duplication across shards included) against a plain loop over
  the same tars that calls the same libraries per image and writes the kept samples with their
  faces blurred (no de-duplication across shards, no resume, no Spark).

Measurements (`--sections hashes,faces`): PDQ and pHash (imagehash, 64 and 256 bits) distances
of near-copies (quality 60, 90% size, 5% centred crop) against distances between distinct
tiles of the bundled photographs; OpenCV's Haar cascades against dlib's HOG detector on
scikit-image's LFW subset (100 faces, 100 non-faces, at 50 and 100 px) and the photographs.

    .venv/bin/python benchmarks/bench_filter.py [--images 400] [--sections steps,stage,hashes,faces]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import platform
import shutil
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from curation.image_filter import faces, hashes, nsfw
from curation.image_filter.samples import add_member, image_of, iter_samples
from curation.shards import loopback


def demo_images(n: int) -> list[bytes]:
    names = loopback.BUNDLED_PHOTOS
    photos = [loopback.load_rgb(loopback.bundled_photo_dir() / name) for name in names]
    out = []
    for i in range(n):
        digest = hashlib.sha1(f"https://example.org/{i}.jpg".encode()).hexdigest()
        out.append(loopback.variant_image(photos[int(digest[:8], 16) % len(photos)], digest[8:]))
    return out


def write_shards(images: list[bytes], folder: Path, per_shard: int) -> None:
    folder.mkdir(parents=True)
    for start in range(0, len(images), per_shard):
        with tarfile.open(folder / f"{start // per_shard:05d}.tar", "w") as tar:
            for i in range(start, min(start + per_shard, len(images))):
                key = f"{i:09d}"
                meta = {"uid": f"u{i:06d}", "url": f"https://example.org/{i}.jpg"}
                add_member(tar, f"{key}.jpg", images[i])
                add_member(tar, f"{key}.txt", b"a caption")
                add_member(tar, f"{key}.json", json.dumps(meta).encode())


def rate(seconds: float, n: int) -> str:
    return f"{n / seconds:7.1f} img/s/core ({1000 * seconds / n:6.1f} ms/img)"


# ---------------------------------------------------------------- steps


def bench_steps(images: list[bytes]) -> None:
    import dlib
    import pdqhash
    from nudenet import NudeDetector

    rgbs = [np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in images]
    nsfw.session()
    faces.detector()
    import imagehash

    pil = [Image.fromarray(rgb) for rgb in rgbs]
    ours = {
        "hashes (PDQ + pHash-256)": lambda i: (hashes.pdq(rgbs[i]), hashes.phash(pil[i])),
        "NSFW": lambda i: nsfw.nsfw_score(rgbs[i]),
        "faces": lambda i: faces.detect_faces(rgbs[i]),
    }
    detector = NudeDetector()  # nudenet's own API: bytes or a path in, boxes out
    hog = dlib.get_frontal_face_detector()
    baseline = {
        "hashes (PDQ + pHash-256)": lambda i: (
            pdqhash.compute(rgbs[i]),
            imagehash.phash(pil[i], hash_size=16),
        ),
        "NSFW": lambda i: detector.detect(images[i]),
        "faces": lambda i: hog(rgbs[i], 1),
    }
    print(f"\n## Steps, one core, {len(images)} images of 256 x 256")
    print("| step | ours | library as documented | ratio |\n|---|---|---|---|")
    for step in ours:
        started = time.perf_counter()
        for i in range(len(images)):
            ours[step](i)
        mine = time.perf_counter() - started
        started = time.perf_counter()
        for i in range(len(images)):
            baseline[step](i)
        theirs = time.perf_counter() - started
        print(f"| {step} | {rate(mine, len(images))} | {rate(theirs, len(images))} | "
              f"{theirs / mine:.2f}x |")  # fmt: skip


# ---------------------------------------------------------------- stage


def plain_loop(shards: Path, output: Path) -> int:
    """What a user would write without the stage: per tar, per image, the same libraries."""
    import dlib
    import imagehash
    import pdqhash
    from nudenet import NudeDetector

    detector = NudeDetector()
    hog = dlib.get_frontal_face_detector()
    output.mkdir(parents=True)
    seen, kept = set(), 0
    for path in sorted(shards.glob("*.tar")):
        with open(path, "rb") as stream, tarfile.open(output / path.name, "w") as out:
            for key, members in iter_samples(stream):
                ext, data = image_of(members)
                digest = hashlib.sha256(data).hexdigest()
                if digest in seen:
                    continue
                seen.add(digest)
                image = Image.open(io.BytesIO(data)).convert("RGB")
                rgb = np.asarray(image)
                pdqhash.compute(rgb)
                imagehash.phash(image, hash_size=16)
                found = detector.detect(data)
                if any(d["class"] in nsfw.NSFW_LABELS and d["score"] >= 0.5 for d in found):
                    continue
                boxes = [[r.left(), r.top(), r.right(), r.bottom()] for r in hog(rgb, 1)]
                if boxes:
                    blurred = faces.blur_faces(image, boxes)
                    buffer = io.BytesIO()
                    blurred.save(buffer, "JPEG", quality=95)
                    members[ext] = buffer.getvalue()
                for name, value in members.items():
                    add_member(out, f"{key}.{name}", value)
                kept += 1
    return kept


def bench_stage(images: list[bytes], per_shard: int) -> None:
    from curation.core.spark import get_spark
    from curation.image_filter.job import FilterConfig, run

    work = Path(tempfile.mkdtemp(prefix="bench-filter-"))
    try:
        write_shards(images, work / "shards", per_shard)
        spark = get_spark("bench_filter", master="local[1]")
        spark.range(1).collect()  # the session's start is not the stage's work
        started = time.perf_counter()
        report = run(
            FilterConfig(shards=str(work / "shards"), output=str(work / "ours")),
            spark=spark,
            log=lambda line: None,
        )
        ours = time.perf_counter() - started
        spark.stop()
        started = time.perf_counter()
        kept = plain_loop(work / "shards", work / "loop")
        theirs = time.perf_counter() - started
        print(f"\n## Whole stage, one core, {len(images)} images in "
              f"{-(-len(images) // per_shard)} shards")  # fmt: skip
        print("| | throughput | kept |\n|---|---|---|")
        print(f"| filter_images (local[1] Spark) | {rate(ours, len(images))} | "
              f"{report.manifest['kept']} |")  # fmt: skip
        print(f"| plain loop, same libraries | {rate(theirs, len(images))} | {kept} |")
        print(f"ratio (loop time / stage time): {theirs / ours:.2f}x; stage drops: "
              f"{report.manifest['drops']}")  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------- measurements


def tiles(k: int) -> list[Image.Image]:
    out = []
    for name in loopback.BUNDLED_PHOTOS:
        photo = loopback.load_rgb(loopback.bundled_photo_dir() / name)
        w, h = photo.size
        for i in range(k):
            for j in range(k):
                out.append(photo.crop((j * w // k, i * h // k, (j + 1) * w // k, (i + 1) * h // k)))
    return out


def edits() -> dict:
    def jpeg60(t):
        buffer = io.BytesIO()
        t.save(buffer, "JPEG", quality=60)
        return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")

    def crop5(t):
        w, h = t.size
        dx, dy = round(w * 0.025), round(h * 0.025)
        return t.crop((dx, dy, w - dx, h - dy))

    return {
        "quality 60": jpeg60,
        "90% size": lambda t: t.resize((int(t.size[0] * 0.9), int(t.size[1] * 0.9)), Image.BICUBIC),
        "5% crop (centred)": crop5,
        "5% crop (corner)": lambda t: t.crop((0, 0, int(t.size[0] * 0.95), int(t.size[1] * 0.95))),
    }


def bench_hashes() -> None:
    candidates = {"PDQ (256 bits)": lambda im: hashes.pdq(np.asarray(im))[0]}
    try:
        import imagehash

        candidates["pHash (64 bits)"] = lambda im: str(imagehash.phash(im))
        candidates["pHash (256 bits)"] = lambda im: str(imagehash.phash(im, hash_size=16))
    except ImportError:
        print("(imagehash not installed: pHash rows skipped)")

    def distance(a: str, b: str) -> int:
        return bin(int(a, 16) ^ int(b, 16)).count("1")

    print("\n## Perceptual hashes: near-copies vs distinct tiles (max / min Hamming distance)")
    print("Tiles of PDQ quality >= 50 (PDQ's advice: do not match below); 'all' includes the rest.")
    for k in (2, 3):
        pictures = tiles(k)
        usable = [hashes.pdq(np.asarray(t))[1] >= hashes.PDQ_MIN_QUALITY for t in pictures]
        print(f"\n### {k} x {k} tiles: {len(pictures)} pictures, {sum(usable)} of quality >= 50")
        header = " | ".join(f"{e} max (all)" for e in edits())
        print(f"| hash | distinct min (all) | {header} |\n|---|---|{'---|' * len(edits())}")
        for name, fn in candidates.items():
            codes = [fn(t) for t in pictures]
            pairs = [
                (distance(codes[i], codes[j]), usable[i] and usable[j])
                for i in range(len(codes))
                for j in range(i + 1, len(codes))
            ]
            distinct = f"{min(d for d, u in pairs if u)} ({min(d for d, _ in pairs)})"
            cells = []
            for edit in edits().values():
                moved = [(distance(fn(edit(t)), c), u) for t, c, u in zip(pictures, codes, usable)]
                cells.append(f"{max(d for d, u in moved if u)} ({max(d for d, _ in moved)})")
            print(f"| {name} | {distinct} | {' | '.join(cells)} |")


def bench_faces() -> None:
    import cv2
    import skimage.data

    lfw = skimage.data.lfw_subset()
    people, others = lfw[:100], lfw[100:]

    def upscale(x, size):
        pixels = (x * 255).astype(np.uint8)
        return np.asarray(Image.fromarray(pixels).resize((size, size), Image.BICUBIC))

    detectors = {}
    for cascade in ("default", "alt", "alt2"):
        model = cv2.CascadeClassifier(
            f"{cv2.data.haarcascades}haarcascade_frontalface_{cascade}.xml"
        )
        detectors[f"OpenCV Haar {cascade}"] = lambda g, m=model: len(
            m.detectMultiScale(
                g if g.ndim == 2 else cv2.cvtColor(g, cv2.COLOR_RGB2GRAY),
                scaleFactor=1.1,
                minNeighbors=5,
                minSize=(24, 24),
            )  # fmt: skip
        )
    detectors["dlib HOG, 1 upsampling (ours)"] = lambda g: len(faces.detector()(g, 1))
    print("\n## Face detectors on scikit-image's LFW subset (100 faces, 100 non-faces)")
    print("| detector | faces found at 50 px | at 100 px | non-faces flagged | ms / 50-px image |")
    print("|---|---|---|---|---|")
    for name, detect in detectors.items():
        found = {size: sum(detect(upscale(x, size)) > 0 for x in people) for size in (50, 100)}
        started = time.perf_counter()
        flagged = sum(detect(upscale(x, 50)) > 0 for x in others)
        ms = 1000 * (time.perf_counter() - started) / len(others)
        print(f"| {name} | {found[50]} | {found[100]} | {flagged} | {ms:.1f} |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--per-shard", type=int, default=100)
    parser.add_argument("--sections", default="steps,stage,hashes,faces")
    args = parser.parse_args(argv)
    sections = set(args.sections.split(","))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}")  # fmt: skip
    if sections & {"steps", "stage"}:
        # one core for both sides: onnxruntime (nudenet's own session) would use every core
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        images = demo_images(args.images)
    if "steps" in sections:
        bench_steps(images)
    if "stage" in sections:
        bench_stage(images, args.per_shard)
    if "hashes" in sections:
        bench_hashes()
    if "faces" in sections:
        bench_faces()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
