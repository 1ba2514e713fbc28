"""Evaluation sets: small real labelled data for tests, the demo and CPU sweeps, from
wheel-shipped data, and the multilingual benchmarks (`trainer.benchmark_sets`).

    python -m trainer.datasets digits OUT_DIR
    python -m trainer.datasets xm3600 RAW OUT_DIR
    python -m trainer.datasets babel-imagenet CLASSNAMES_JSON IMAGENET_VAL OUT_DIR
    python -m trainer.datasets cvqa RAW OUT_DIR

writes scikit-learn's handwritten digits (1,797 real 8 x 8 scans, 10 classes) as
- OUT_DIR/train/{00000..}.tar + sizes.json: training shards (png + templated caption + json),
- OUT_DIR/zeroshot/: the held-out images in CLIP_benchmark's WebDataset layout for zero-shot
  classification (test/{0..}.tar with png + cls, test/nshards.txt, classnames.txt,
  zeroshot_classification_templates.txt), plus classnames.LANG.txt / templates per language,
  and the training images as its train/ split (for `--task linear_probe`),
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

from trainer import benchmark_sets
from trainer.benchmark_sets import write_benchmark_dir, write_lines, write_tar

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
        write_tar(train_dir / name, samples)
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
    # the training images again, as CLIP_benchmark's train split: a linear probe fits on them
    write_benchmark_dir(
        zeroshot,
        [
            {"__key__": f"t{n:07d}", "png": pngs[i], "cls": str(labels[i]).encode()}
            for n, i in enumerate(sorted(train))
        ],
        "classification",
        split="train",
    )
    write_lines(zeroshot / "classnames.txt", CLASSNAMES["en"])
    write_lines(zeroshot / "zeroshot_classification_templates.txt", TEMPLATES["en"])
    for lang in [x for x in CLASSNAMES if x != "en"]:
        write_lines(zeroshot / f"classnames.{lang}.txt", CLASSNAMES[lang])
        write_lines(zeroshot / f"zeroshot_classification_templates.{lang}.txt", TEMPLATES[lang])

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
        description="Write evaluation sets in CLIP_benchmark's WebDataset layout (what "
        "trainer.evaluate and --eval read): the digits (training shards too), or a multilingual "
        "benchmark from the files it distributes. Each prints a JSON summary with what it skipped.",
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
    x = sub.add_parser(
        "xm3600", help="Crossmodal-3600: per-language image-text retrieval (36 languages)"
    )
    x.add_argument("raw", help="folder with captions.jsonl and images/<key>.jpg")
    x.add_argument("out_dir", help="the retrieval set to write")
    x.add_argument(
        "--languages", help="comma list of caption languages (default: all 36 of Crossmodal-3600)"
    )
    b = sub.add_parser(
        "babel-imagenet",
        help="Babel-ImageNet: ImageNet zero-shot classification in up to 298 languages",
    )
    b.add_argument(
        "raw",
        help="babel_imagenet-298.json (or its data/ folder, which may also hold "
        "nllb_dist13b_prompts.json)",
    )
    b.add_argument("imagenet_val", help="ImageNet validation images: synset folders, or flat "
                   "with LOC_val_solution.csv")  # fmt: skip
    b.add_argument("out_dir", help="the classification set to write")
    b.add_argument("--languages", help="comma list of language codes (default: all it has + en)")
    b.add_argument("--prompts", help="nllb_dist13b_prompts.json: translated templates per language")
    c = sub.add_parser(
        "cvqa", help="CVQA: culturally diverse multilingual visual question answering (4 options)"
    )
    c.add_argument("raw", help="the hub's Parquet files (folder or file) or a save_to_disk folder")
    c.add_argument("out_dir", help="the multiple-choice set to write")
    for parser in (x, b, c):
        parser.add_argument("--shard-size", type=int, default=1000, help="samples per shard")
    args = p.parse_args(argv)
    if args.dataset == "digits" and not 0 < args.test_fraction < 1:
        p.error("--test-fraction must be between 0 and 1")
    given = getattr(args, "languages", None) or ""  # cvqa has no --languages
    languages = [v.strip() for v in given.split(",") if v.strip()] or None
    try:
        if args.dataset == "digits":
            summary = build_digits(
                Path(args.out_dir),
                image_size=args.image_size,
                test_fraction=args.test_fraction,
                languages=tuple(languages or ("en",)),
                shard_size=args.shard_size,
                seed=args.seed,
            )
        elif args.dataset == "xm3600":
            summary = benchmark_sets.build_xm3600(
                args.raw, args.out_dir, languages, shard_size=args.shard_size
            )
        elif args.dataset == "babel-imagenet":
            summary = benchmark_sets.build_babel_imagenet(
                args.raw, args.imagenet_val, args.out_dir, languages, args.prompts,
                shard_size=args.shard_size,
            )  # fmt: skip
        else:
            summary = benchmark_sets.build_cvqa(args.raw, args.out_dir, shard_size=args.shard_size)
    except (ValueError, ImportError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
