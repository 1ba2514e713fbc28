"""Small real labelled datasets for tests, the demo and CPU sweeps, from wheel-shipped data.

    python -m trainer.datasets digits OUT_DIR

writes scikit-learn's handwritten digits (1,797 real 8 x 8 scans, 10 classes) as
- OUT_DIR/train/{00000..}.tar + sizes.json: training shards (png + templated caption + json),
- OUT_DIR/zeroshot/: the held-out images in CLIP_benchmark's WebDataset layout for zero-shot
  classification (test/{0..}.tar with png + cls, test/nshards.txt, classnames.txt,
  zeroshot_classification_templates.txt), plus classnames.LANG.txt / templates per language,
- OUT_DIR/retrieval/: the same held-out images with one caption each (dataset_type.txt =
  retrieval, txt + json with the caption's `lang`).
The split is stratified and seeded: no held-out image is in the training shards.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import sys
from pathlib import Path

import numpy as np
from PIL import Image

CLASSNAMES = {
    "en": "zero one two three four five six seven eight nine".split(),
    "de": "null eins zwei drei vier fünf sechs sieben acht neun".split(),
    "fr": "zéro un deux trois quatre cinq six sept huit neuf".split(),
    "es": "cero uno dos tres cuatro cinco seis siete ocho nueve".split(),
}
TEMPLATES = {
    "en": [
        "a photo of the number {c}.",
        "a handwritten {c}.",
        "the digit {c}.",
        "a blurry scan of the number {c}.",
    ],
    "de": ["ein Foto der Zahl {c}.", "eine handgeschriebene {c}.", "die Ziffer {c}."],
    "fr": ["une photo du chiffre {c}.", "un {c} écrit à la main.", "le chiffre {c}."],
    "es": ["una foto del número {c}.", "un {c} escrito a mano.", "el dígito {c}."],
}


def digit_images(image_size: int) -> tuple[list[bytes], list[int]]:
    """PNG bytes (image_size x image_size RGB, bicubic upscale of the 0..16 scans) and labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    pngs = []
    for pixels in digits.images:
        gray = Image.fromarray(np.round(pixels * (255 / 16)).astype(np.uint8))  # 8 x 8, mode L
        image = gray.resize((image_size, image_size), Image.BICUBIC).convert("RGB")
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        pngs.append(buf.getvalue())
    return pngs, [int(t) for t in digits.target]


def stratified_split(labels: list[int], test_fraction: float, seed: int) -> tuple[list, list]:
    """(train indices, test indices): round(test_fraction * n_c) of each class to the test set."""
    rng = random.Random(seed)
    train, test = [], []
    for c in sorted(set(labels)):
        members = [i for i, label in enumerate(labels) if label == c]
        rng.shuffle(members)
        n_test = round(test_fraction * len(members))
        test += members[:n_test]
        train += members[n_test:]
    rng.shuffle(train)
    return train, sorted(test)


def _write_tar(path: Path, samples: list[dict]) -> None:
    import tarfile

    with tarfile.open(path, "w") as tar:
        for sample in samples:
            key = sample.pop("__key__")
            for ext, data in sample.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mode, info.mtime = len(data), 0o644, 0  # byte-identical reruns
                tar.addfile(info, io.BytesIO(data))


def _lines(path: Path, lines: list[str]) -> None:
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")


def write_benchmark_dir(out: Path, samples: list[dict], dataset_type: str) -> None:
    """CLIP_benchmark's layout: test/0.tar (one shard), test/nshards.txt, dataset_type.txt."""
    (out / "test").mkdir(parents=True, exist_ok=True)
    _write_tar(out / "test" / "0.tar", samples)
    (out / "test" / "nshards.txt").write_text("1\n")
    (out / "dataset_type.txt").write_text(f"{dataset_type}\n")


def build_digits(
    out_dir: Path,
    *,
    image_size: int = 32,
    test_fraction: float = 0.2,
    languages: tuple[str, ...] = ("en",),
    shard_size: int = 256,
    seed: int = 0,
) -> dict:
    unknown = [lang for lang in languages if lang not in CLASSNAMES]
    if unknown:
        raise ValueError(f"no digit names for {unknown}; known: {', '.join(CLASSNAMES)}")
    out_dir = Path(out_dir)
    pngs, labels = digit_images(image_size)
    train, test = stratified_split(labels, test_fraction, seed)
    rng = random.Random(seed + 1)

    def caption(i: int, lang: str) -> str:
        return rng.choice(TEMPLATES[lang]).format(c=CLASSNAMES[lang][labels[i]])

    # training shards: a seeded language and template per image
    train_dir = out_dir / "train"
    train_dir.mkdir(parents=True, exist_ok=True)
    sizes = {}
    for s in range(0, len(train), shard_size):
        samples = []
        for i in train[s : s + shard_size]:
            lang = rng.choice(languages)
            meta = {"lang": lang, "label": labels[i], "source_index": i}
            samples.append(
                {
                    "__key__": f"digit{i:05d}",
                    "png": pngs[i],
                    "txt": caption(i, lang).encode(),
                    "json": json.dumps(meta).encode(),
                }
            )
        name = f"{s // shard_size:05d}.tar"
        _write_tar(train_dir / name, samples)
        sizes[name] = len(samples)
    (train_dir / "sizes.json").write_text(json.dumps(sizes, indent=1) + "\n")

    zeroshot = out_dir / "zeroshot"
    write_benchmark_dir(
        zeroshot,
        [
            {"__key__": f"s{n:07d}", "png": pngs[i], "cls": str(labels[i]).encode()}
            for n, i in enumerate(test)
        ],
        "classification",
    )
    _lines(zeroshot / "classnames.txt", CLASSNAMES["en"])
    _lines(zeroshot / "zeroshot_classification_templates.txt", TEMPLATES["en"])
    for lang in [x for x in CLASSNAMES if x != "en"]:
        _lines(zeroshot / f"classnames.{lang}.txt", CLASSNAMES[lang])
        _lines(zeroshot / f"zeroshot_classification_templates.{lang}.txt", TEMPLATES[lang])

    retrieval_samples = []
    for n, i in enumerate(test):
        lang = languages[n % len(languages)]
        retrieval_samples.append(
            {
                "__key__": f"s{n:07d}",
                "png": pngs[i],
                "txt": caption(i, lang).encode(),
                "json": json.dumps({"lang": lang, "label": labels[i]}).encode(),
            }
        )
    write_benchmark_dir(out_dir / "retrieval", retrieval_samples, "retrieval")
    summary = {
        "dataset": "sklearn digits",
        "train_samples": len(train),
        "train_shards": len(sizes),
        "test_samples": len(test),
        "image_size": image_size,
        "languages": list(languages),
        "seed": seed,
    }
    (out_dir / "digits.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m trainer.datasets",
        description="Build a small real labelled dataset: training shards + CLIP_benchmark-layout "
        "zero-shot and retrieval sets.",
    )
    sub = p.add_subparsers(dest="dataset", required=True)
    d = sub.add_parser("digits", help="scikit-learn's handwritten digits (1,797 images)")
    d.add_argument("out_dir", help="folder for train/, zeroshot/ and retrieval/")
    d.add_argument("--image-size", type=int, default=32, help="side of the stored images (px)")
    d.add_argument("--test-fraction", type=float, default=0.2, help="held out, per class")
    d.add_argument(
        "--languages",
        default="en",
        help=f"comma list of caption languages for train/ and retrieval/ ({','.join(CLASSNAMES)})",
    )
    d.add_argument("--shard-size", type=int, default=256, help="training samples per shard")
    d.add_argument("--seed", type=int, default=0, help="split, languages and templates")
    args = p.parse_args(argv)
    if not 0 < args.test_fraction < 1:
        p.error("--test-fraction must be between 0 and 1")
    try:
        summary = build_digits(
            Path(args.out_dir),
            image_size=args.image_size,
            test_fraction=args.test_fraction,
            languages=tuple(x.strip() for x in args.languages.split(",") if x.strip()),
            shard_size=args.shard_size,
            seed=args.seed,
        )
    except (ValueError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
