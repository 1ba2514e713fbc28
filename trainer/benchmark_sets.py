"""The multilingual benchmarks MetaCLIP 2 reports, from the files each one distributes into
CLIP_benchmark's WebDataset layout (`trainer.evaluate` reads it; `python -m trainer.datasets`
is the command line):

- **xm3600**: Crossmodal-3600 (Google): `captions.jsonl` (one line per image: `image/key` and,
  per language code, `{"caption": [...], ...}`) and `images/<key>.jpg` -> a retrieval set with
  one sample per image: the image, every caption as a `txt` line (what CLIP_benchmark reads),
  and `{"image_key", "captions": {language: [...]}}`. Per-language retrieval then ranks each
  language's captions among the images that have captions in it (the 3,600), as MetaCLIP's
  `clipeval/xm3600` does; the `mean` row is the unweighted mean over languages it reports.
  (One sample per image and language would store and encode every image 36 times.)
- **babel-imagenet**: the Babel-ImageNet class names (`babel_imagenet-298.json`: per upper-case
  language code, `[class indices, names]`) and optionally its translated prompts
  (`nllb_dist13b_prompts.json`: per language, prompts with `{}`) + an ImageNet validation folder
  -> a classification set: `classnames.LANG.txt` and `classes.LANG.txt` (the indices it covers)
  per language, scored on the images of the covered classes among the covered classes only, as
  `benchmark/eval_babel_imagenet.py` does. English uses OpenAI's 1,000 names and 80 templates
  (open_clip ships them; Babel-ImageNet special-cases English the same way); a language
  without translated prompts uses the English templates.
- **cvqa**: CVQA as the Hugging Face hub distributes it (Parquet files, or a `save_to_disk`
  folder of Arrow files): `image`, `ID`, `Subset`, `Question`, `Options`, `Translated
  Question`, `Translated Options`, `Label` -> a `multiple_choice` set whose json carries the
  question and options as asked (LOCAL) and in English (EN). The public copy's `Label` is -1
  (its answers are held back for the leaderboard): such rows are counted `no_label`, skipped.

Every builder counts what it skips (a missing image, a language an image lacks, ...) and writes
the counts with the sample counts to `OUT/build.json`.
"""

from __future__ import annotations

import ast
import io
import json
import re
import tarfile
from collections import Counter
from pathlib import Path

XM3600_LANGUAGES = (
    "ar bn cs da de el en es fa fi fil fr he hi hr hu id it ja ko mi nl no pl pt quz ro ru sv "
    "sw te th tr uk vi zh"
).split()
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".JPEG", ".JPG", ".PNG")


# -- CLIP_benchmark's layout ---------------------------------------------------------------------


def write_tar(path: Path, samples: list[dict]) -> None:
    with tarfile.open(path, "w") as tar:
        for sample in samples:
            key = sample.pop("__key__")
            for ext, data in sample.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mode, info.mtime = len(data), 0o644, 0  # byte-identical reruns
                tar.addfile(info, io.BytesIO(data))


def write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")


def write_benchmark_dir(
    out: Path, samples, dataset_type: str, split: str = "test", shard_size: int = 1000
) -> int:
    """CLIP_benchmark's layout: SPLIT/{0..n-1}.tar of `shard_size` samples, SPLIT/nshards.txt,
    dataset_type.txt; returns the number of samples. `samples` may be a generator."""
    (out / split).mkdir(parents=True, exist_ok=True)
    shard, n_shards, total = [], 0, 0
    for sample in samples:
        shard.append(sample)
        if len(shard) == shard_size:
            write_tar(out / split / f"{n_shards}.tar", shard)
            shard, n_shards, total = [], n_shards + 1, total + shard_size
    if shard or not n_shards:
        write_tar(out / split / f"{n_shards}.tar", shard)
        n_shards, total = n_shards + 1, total + len(shard)
    (out / split / "nshards.txt").write_text(f"{n_shards}\n")
    (out / "dataset_type.txt").write_text(f"{dataset_type}\n")
    return total


def _write_summary(out: Path, summary: dict) -> dict:
    (out / "build.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary


def _image_member(data: bytes) -> str:
    """The WebDataset extension of encoded image bytes."""
    if data.startswith(b"\x89PNG"):
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return "jpg"


def _one_line(text: str) -> str:
    return " ".join(text.split())


# -- Crossmodal-3600 ---------------------------------------------------------------------------


def build_xm3600(raw: Path, out: Path, languages=None, shard_size: int = 1000) -> dict:
    raw, out = Path(raw), Path(out)
    captions = raw / "captions.jsonl"
    if not captions.is_file():
        raise ValueError(f"{raw}: no captions.jsonl (Crossmodal-3600's captions file)")
    langs = list(languages or XM3600_LANGUAGES)
    unknown = [lang for lang in langs if lang not in XM3600_LANGUAGES]
    if unknown:
        raise ValueError(
            f"not Crossmodal-3600 languages: {', '.join(unknown)} "
            f"(it has {' '.join(XM3600_LANGUAGES)})"
        )
    dropped, per_language = Counter(), Counter()

    def samples():
        with captions.open(encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    key = str(record["image/key"])
                except (ValueError, KeyError, TypeError):
                    dropped["bad_line"] += 1
                    continue
                path = raw / "images" / f"{key}.jpg"
                if not path.is_file():
                    dropped["missing_image"] += 1
                    continue
                by_lang = {}
                for lang in langs:
                    entry = record.get(lang)
                    found = entry.get("caption") if isinstance(entry, dict) else None
                    caps = [_one_line(c) for c in found or [] if isinstance(c, str)]
                    caps = [c for c in caps if c]
                    if not caps:
                        dropped["missing_language"] += 1  # for this image only
                        continue
                    by_lang[lang] = caps
                    per_language[lang] += 1
                if not by_lang:
                    continue
                data = path.read_bytes()
                yield {
                    "__key__": key,
                    _image_member(data): data,
                    "txt": "\n".join(c for caps in by_lang.values() for c in caps).encode(),
                    "json": json.dumps(
                        {"image_key": key, "captions": by_lang}, ensure_ascii=False
                    ).encode(),
                }

    total = write_benchmark_dir(out, samples(), "retrieval", shard_size=shard_size)
    if not total:
        raise ValueError(
            f"{captions}: no image with captions in {', '.join(langs)} ({dict(dropped)})"
        )
    summary = {"benchmark": "xm3600", "images": total, "per_language": dict(per_language)}
    summary["dropped"] = dict(dropped)
    return _write_summary(out, summary)


# -- Babel-ImageNet ----------------------------------------------------------------------------


def imagenet_wnids() -> list[str]:
    """The 1,000 ImageNet-1k synsets in class-index order (sorted), as timm ships them."""
    from importlib.resources import files

    text = (files("timm.data") / "_info" / "imagenet_synsets.txt").read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


def imagenet_val_images(folder: Path) -> list[tuple[Path, int]]:
    """(image, class index) of an ImageNet validation folder in one of its usual layouts: one
    sub-folder per synset (`n01440764/ILSVRC2012_val_00000293.JPEG`, torchvision's
    ImageFolder), or the images flat beside Kaggle's `LOC_val_solution.csv` (in the folder or
    its parent)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder}: no such ImageNet validation folder")
    index = {wnid: i for i, wnid in enumerate(imagenet_wnids())}
    subfolders = sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith("n"))
    if subfolders:
        unknown = [p.name for p in subfolders if p.name not in index]
        if unknown:
            raise ValueError(f"{folder}: {unknown[0]} is not an ImageNet-1k synset")
        return [
            (image, index[sub.name])
            for sub in subfolders
            for image in sorted(sub.iterdir())
            if image.suffix in IMAGE_SUFFIXES
        ]
    # Kaggle's download has it 4 levels above ILSVRC/Data/CLS-LOC/val
    solution = next(
        (
            p / "LOC_val_solution.csv"
            for p in [folder, *folder.resolve().parents][:5]
            if (p / "LOC_val_solution.csv").is_file()
        ),
        None,
    )
    if solution is None:
        raise ValueError(
            f"{folder}: neither one sub-folder per synset (n01440764/...) nor flat images with "
            "LOC_val_solution.csv (in the folder or up to 4 levels above)"
        )
    labels = {}
    for line in solution.read_text().splitlines()[1:]:
        image_id, _, prediction = line.partition(",")
        if prediction.split():
            labels[image_id] = index.get(prediction.split()[0])
    return [
        (image, labels[image.stem])
        for image in sorted(folder.iterdir())
        if image.suffix in IMAGE_SUFFIXES and labels.get(image.stem) is not None
    ]


def _babel_files(raw: Path, prompts: Path | None) -> tuple[Path, Path | None]:
    if raw.is_dir():
        names = ("babel_imagenet-298.json", "babel_imagenet.json")
        found = next((raw / n for n in names if (raw / n).is_file()), None)
        if found is None:
            raise ValueError(f"{raw}: no {' or '.join(names)} (Babel-ImageNet's data/ folder)")
        if prompts is None and (raw / "nllb_dist13b_prompts.json").is_file():
            prompts = raw / "nllb_dist13b_prompts.json"
        raw = found
    if not raw.is_file():
        raise ValueError(f"{raw}: no such Babel-ImageNet class-name file")
    return raw, prompts


def build_babel_imagenet(
    raw: Path, imagenet_val: Path, out: Path, languages=None, prompts=None, shard_size=1000
) -> dict:
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES

    raw, prompts = _babel_files(Path(raw), Path(prompts) if prompts else None)
    out = Path(out)
    try:
        names = json.loads(raw.read_text(encoding="utf-8"))
        names = {code.lower(): (list(map(int, v[0])), list(v[1])) for code, v in names.items()}
    except (ValueError, TypeError, IndexError, AttributeError) as exc:
        raise ValueError(
            f"{raw}: not Babel-ImageNet's {{LANG: [indices, names]}} ({exc})"
        ) from None
    translated = {}
    if prompts is not None:
        translated = {
            k.lower(): v for k, v in json.loads(prompts.read_text(encoding="utf-8")).items()
        }
    english = [t("{c}") for t in OPENAI_IMAGENET_TEMPLATES]
    langs = [x.lower() for x in languages] if languages else ["en", *sorted(set(names) - {"en"})]
    unknown = [lang for lang in langs if lang != "en" and lang not in names]
    if unknown:
        raise ValueError(f"{raw}: no class names for {', '.join(unknown)}")
    out.mkdir(parents=True, exist_ok=True)
    covered, summary_langs = set(), {}
    for lang in langs:
        if lang == "en":  # OpenAI's names and templates, every class (as Babel-ImageNet does)
            write_lines(out / "classnames.txt", list(IMAGENET_CLASSNAMES))
            write_lines(out / "zeroshot_classification_templates.txt", english)
            covered |= set(range(len(IMAGENET_CLASSNAMES)))
            summary_langs[lang] = {"classes": len(IMAGENET_CLASSNAMES), "templates": "openai_en"}
            continue
        indices, labels = names[lang]
        if len(indices) != len(labels) or not indices:
            raise ValueError(
                f"{raw}: {lang.upper()} has {len(indices)} indices, {len(labels)} names"
            )
        templates = [t.replace("{}", "{c}") for t in translated.get(lang, [])]
        write_lines(out / f"classnames.{lang}.txt", [_one_line(x) for x in labels])
        write_lines(out / f"classes.{lang}.txt", [str(i) for i in indices])
        write_lines(out / f"zeroshot_classification_templates.{lang}.txt", templates or english)
        covered |= set(indices)
        summary_langs[lang] = {
            "classes": len(indices),
            "templates": "nllb_dist13b" if templates else "openai_en",
        }
    wanted = [
        (path, label) for path, label in imagenet_val_images(Path(imagenet_val)) if label in covered
    ]
    dropped = Counter()

    def samples():
        for path, label in wanted:
            data = path.read_bytes()
            if not data:
                dropped["empty_image"] += 1
                continue
            yield {"__key__": path.stem, _image_member(data): data, "cls": str(label).encode()}

    total = write_benchmark_dir(out, samples(), "classification", shard_size=shard_size)
    if not total:
        raise ValueError(
            f"{imagenet_val}: no validation image of the {len(covered)} classes these "
            f"languages name ({dict(dropped)})"
        )
    summary = {"benchmark": "babel-imagenet", "samples": total, "languages": summary_langs}
    summary["dropped"] = dict(dropped)
    return _write_summary(out, summary)


# -- CVQA --------------------------------------------------------------------------------------

CVQA_COLUMNS = ("image", "ID", "Subset", "Question", "Options", "Translated Question")
CVQA_COLUMNS += ("Translated Options", "Label", "Category")


def _cvqa_tables(raw: Path):
    """The record batches of CVQA's Parquet files or of a `datasets` save_to_disk folder."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if raw.is_file():
        files = [raw]
    else:
        files = sorted(raw.rglob("*.parquet")) or sorted(raw.rglob("*.arrow"))
    if not files:
        raise ValueError(f"{raw}: no CVQA .parquet or .arrow files")
    for path in files:
        if path.suffix == ".parquet":
            yield from pq.ParquetFile(path).iter_batches(batch_size=256)
        else:
            with pa.memory_map(str(path)) as source:
                try:
                    reader = pa.ipc.open_stream(source)
                except pa.ArrowInvalid:
                    reader = pa.ipc.open_file(source)
                    for i in range(reader.num_record_batches):
                        yield reader.get_batch(i)
                    continue
                yield from reader


def _options(value) -> list[str] | None:
    """A list of option strings (early revisions of the hub copy stored the list as a string)."""
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return None
    if not isinstance(value, (list, tuple)) or not all(isinstance(o, str) for o in value):
        return None
    return [_one_line(o) for o in value]


def cvqa_subset(raw: str) -> str:
    """ "('Japanese', 'Japan')" -> "Japanese-Japan": a name fit for metric keys."""
    try:
        parts = ast.literal_eval(raw)
        parts = parts if isinstance(parts, (list, tuple)) else [parts]
    except (ValueError, SyntaxError):
        parts = [raw]
    return "-".join(re.sub(r"[^\w]+", "_", str(p)).strip("_") for p in parts)


def build_cvqa(raw: Path, out: Path, shard_size: int = 1000) -> dict:
    raw, out = Path(raw), Path(out)
    dropped, per_subset = Counter(), Counter()

    def question(row: dict, n: int) -> dict | None:
        try:
            label = int(row.get("Label"))
        except (TypeError, ValueError):
            dropped["bad_label"] += 1
            return None
        if label < 0:
            dropped["no_label"] += 1
            return None
        image = row.get("image")
        data = image.get("bytes") if isinstance(image, dict) else image
        if not data:
            dropped["missing_image"] += 1
            return None
        prompts = {}
        for how, prefix in (("LOCAL", ""), ("EN", "Translated ")):
            options, text = _options(row.get(f"{prefix}Options")), row.get(f"{prefix}Question")
            if options is None or len(options) != 4 or not isinstance(text, str):
                dropped["bad_options"] += 1
                return None
            prompts[how] = {"question": _one_line(text), "options": options}
        if not 0 <= label < 4:
            dropped["bad_label"] += 1
            return None
        subset = cvqa_subset(str(row.get("Subset", "")))
        per_subset[subset] += 1
        meta = {"id": row.get("ID"), "subset": subset, "subset_raw": row.get("Subset")}
        meta.update(label=label, category=row.get("Category"), prompts=prompts)
        # the row number keeps keys unique (samples are grouped by key when read back)
        key = f"{n:07d}_" + re.sub(r"[^\w-]+", "_", str(row.get("ID") or ""))
        return {
            "__key__": key,
            _image_member(data): data,
            "cls": str(label).encode(),
            "json": json.dumps(meta, ensure_ascii=False).encode(),
        }

    def samples():
        n = 0
        for batch in _cvqa_tables(raw):
            columns = [c for c in CVQA_COLUMNS if c in batch.schema.names]
            for row in batch.select(columns).to_pylist():
                n += 1
                sample = question(row, n)
                if sample is not None:
                    yield sample

    total = write_benchmark_dir(out, samples(), "multiple_choice", shard_size=shard_size)
    if not total:
        hint = (
            ": the hub copy's Label is -1 (CVQA keeps its answers for the leaderboard); use a "
            "copy with the answers"
            if dropped["no_label"]
            else ""
        )
        raise ValueError(f"{raw}: no labelled CVQA question ({dict(dropped)}){hint}")
    summary = {
        "benchmark": "cvqa",
        "questions": total,
        "per_subset": dict(sorted(per_subset.items())),
    }
    summary["dropped"] = dict(dropped)
    return _write_summary(out, summary)
