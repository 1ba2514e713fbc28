"""The multilingual benchmarks from their distributed formats (tests/benchmark_fixtures.py)
through `python -m trainer.datasets` and `trainer.evaluate`: sample counts per language, what is
skipped and counted, and scores equal to a reference computed here from the model's embeddings
(per-language retrieval recall, classification over a language's covered classes only, CVQA
accuracy per subset with LOCAL and EN prompts)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("open_clip")
pytest.importorskip("skimage")

from benchmark_fixtures import (  # noqa: E402
    BABEL,
    CVQA_ROWS,
    LABELS,
    PROMPTS,
    VAL_IMAGES,
    write_babel,
    write_cvqa,
    write_imagenet_val,
    write_xm3600,
)

from trainer import augment, evaluate, models  # noqa: E402
from trainer import data as trainer_data  # noqa: E402
from trainer.benchmark_sets import imagenet_val_images, imagenet_wnids  # noqa: E402
from trainer.datasets import main as datasets_main  # noqa: E402

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    clip = models.build_model("tiny-clip").eval()
    tokenizer = models.build_tokenizer("tiny-clip", None, clip.context_length)
    return clip, tokenizer, augment.DeviceTransform.for_model(clip, CPU)


def members(root: Path) -> list[dict]:
    """Every sample of a set's test split, in order, as the trainer's shard reader groups it."""
    counters = Counter()
    urls = evaluate.open_benchmark(root).urls
    return [
        sample
        for url in urls
        for _, sample in trainer_data.read_shard(url, lambda k: True, counters)
    ]


@torch.no_grad()
def image_embeddings(model, images: list[bytes]) -> torch.Tensor:
    clip, _, transform = model  # decoded as evaluation decodes (reduced DCT scale when large)
    batch = evaluate._image_batch([trainer_data.decode_image(b, transform.size) for b in images])
    return F.normalize(clip.encode_image(transform(batch)), dim=-1)


@torch.no_grad()
def text_embeddings(model, texts: list[str]) -> torch.Tensor:
    clip, tokenizer, _ = model
    return F.normalize(clip.encode_text(tokenizer(texts)), dim=-1)


def build(*argv) -> dict:
    assert datasets_main([str(a) for a in argv]) == 0
    return json.loads(
        (Path(argv[-1 if argv[-2] != "--languages" else -3]) / "build.json").read_text()
    )


# -- Crossmodal-3600 -------------------------------------------------------------------------------


def test_xm3600_counts_and_per_language_recall(model, tmp_path, wit_captions, cc3m_captions):
    expected = write_xm3600(tmp_path / "raw", wit_captions, cc3m_captions)
    out = tmp_path / "xm3600"
    summary = build("xm3600", tmp_path / "raw", out, "--languages", "en,el,ja")
    assert summary["per_language"] == expected["per_language"]
    assert summary["dropped"] == expected["dropped"] and summary["images"] == 3
    samples = members(out)  # one per image, its captions by language in the json
    assert len(samples) == 3 and (out / "dataset_type.txt").read_text().strip() == "retrieval"
    captions = []  # (sample, language, caption)
    for n, sample in enumerate(samples):
        by_lang = json.loads(sample["json"])["captions"]
        for lang, caps in by_lang.items():
            assert caps == expected["captions"][sample["__key__"], lang]
            captions += [(n, lang, c) for c in caps]
        assert sample["txt"].decode().split("\n") == [c for caps in by_lang.values() for c in caps]
    assert len({(n, lang) for n, lang, _ in captions}) == sum(expected["per_language"].values())

    clip, tokenizer, transform = model
    result = evaluate.Evaluator(evaluate.open_benchmark(out)).run(clip, tokenizer, transform)
    images = image_embeddings(model, [s["jpg"] for s in samples])
    for lang in (None, "en", "el", "ja"):
        mine = [(n, c) for n, text_lang, c in captions if lang is None or text_lang == lang]
        owners = sorted({n for n, _ in mine})  # the images with a caption in this language
        texts = text_embeddings(model, [c for _, c in mine])
        sims = texts @ images[owners].T
        owner = torch.tensor([owners.index(n) for n, _ in mine])
        text_to_image = (sims.argmax(dim=1) == owner).float().mean().item()
        image_to_text = (owner[sims.argmax(dim=0)] == torch.arange(len(owners))).float().mean()
        got = result["metrics"][lang or "all"]
        assert got["images"] == len(owners) and got["texts"] == len(mine)
        assert got["image_retrieval_recall@1"] == pytest.approx(text_to_image)
        assert got["text_retrieval_recall@1"] == pytest.approx(image_to_text.item())
    mean = result["metrics"]["mean"]["image_retrieval_recall@1"]
    per_lang = [result["metrics"][lang]["image_retrieval_recall@1"] for lang in ("en", "el", "ja")]
    assert mean == pytest.approx(sum(per_lang) / 3)
    # all 36 languages by default: the languages an image lacks are counted, not errors
    every = build("xm3600", tmp_path / "raw", tmp_path / "all")
    assert every["per_language"] == expected["per_language"]
    assert every["dropped"]["missing_language"] == 3 * 36 - 7
    assert (
        datasets_main(["xm3600", str(tmp_path / "raw"), str(tmp_path / "x"), "--languages", "EN"])
        == 2
    )


def test_both_command_lines_list_the_sets_and_tasks(capsys):
    from trainer.evaluate import parse_args

    for run in (lambda: datasets_main(["--help"]), lambda: parse_args(["--help"])):
        with pytest.raises(SystemExit):
            run()
    shown = capsys.readouterr().out
    for name in ("xm3600", "babel-imagenet", "cvqa", "digits", "multiple_choice", "linear_probe"):
        assert name in shown, name


# -- Babel-ImageNet --------------------------------------------------------------------------------


def test_imagenet_val_layouts_give_the_same_labelled_images(tmp_path):
    write_imagenet_val(tmp_path / "folders", flat=False)
    write_imagenet_val(tmp_path / "flat", flat=True)
    folders = {(p.stem, label) for p, label in imagenet_val_images(tmp_path / "folders")}
    flat = {(p.stem, label) for p, label in imagenet_val_images(tmp_path / "flat")}
    want = {(stem, LABELS[wnid]) for wnid, images in VAL_IMAGES.items() for stem, _, _ in images}
    assert folders == flat == want
    assert all(imagenet_wnids()[LABELS[w]] == w for w in LABELS)  # the index is the synset's
    (tmp_path / "folders" / "n99999999").mkdir()
    with pytest.raises(ValueError, match="n99999999 is not an ImageNet-1k synset"):
        imagenet_val_images(tmp_path / "folders")


def test_babel_imagenet_scores_each_language_on_its_own_classes(model, tmp_path):
    write_babel(tmp_path / "babel")
    write_imagenet_val(tmp_path / "val", flat=False)
    out = tmp_path / "babel_set"
    summary = build("babel-imagenet", tmp_path / "babel", tmp_path / "val", out)
    assert summary["samples"] == 5  # English names every class: every image is kept
    assert summary["languages"]["de"] == {"classes": 2, "templates": "nllb_dist13b"}
    assert summary["languages"]["el"] == {"classes": 3, "templates": "openai_en"}
    assert (out / "classes.de.txt").read_text().split() == ["281", "967"]
    assert len((out / "classnames.txt").read_text().splitlines()) == 1000
    covered_only = build("babel-imagenet", tmp_path / "babel", tmp_path / "val", tmp_path / "de_el",
                         "--languages", "de,el")  # fmt: skip
    assert covered_only["samples"] == 4  # the sports car is named by neither

    clip, tokenizer, transform = model
    bench = evaluate.open_benchmark(out)
    assert bench.classes["el"] == [812, 281, 0] and "en" not in bench.classes
    result = evaluate.Evaluator(bench, ["de", "el", "ja"]).run(clip, tokenizer, transform)
    samples = members(out)
    images = image_embeddings(model, [s["jpg"] for s in samples])
    labels = [int(s["cls"]) for s in samples]
    english = [
        line for line in (out / "zeroshot_classification_templates.txt").read_text().splitlines()
    ]
    for lang in ("de", "el"):
        indices, names = BABEL[lang.upper()]
        templates = [t.replace("{}", "{c}") for t in PROMPTS.get(lang.upper(), [])] or english
        per_class = [
            text_embeddings(model, [t.replace("{c}", n) for t in templates]) for n in names
        ]
        weights = torch.stack([F.normalize(e.mean(dim=0), dim=0) for e in per_class])
        rows = [i for i, label in enumerate(labels) if label in indices]
        predicted = (images[rows] @ weights.T).argmax(dim=1)
        truth = torch.tensor([indices.index(labels[i]) for i in rows])
        got = result["metrics"][lang]
        assert got["images"] == len(rows) and got["classes"] == len(indices)
        assert got["acc1"] == pytest.approx((predicted == truth).float().mean().item())
    assert "ja" not in result["metrics"]  # none of its classes has an image here
    # no image of any named class: one line, not an empty set
    only_ja = [
        "babel-imagenet",
        str(tmp_path / "babel"),
        str(tmp_path / "val"),
        str(tmp_path / "ja"),
    ]
    assert datasets_main([*only_ja, "--languages", "ja"]) == 2


# -- CVQA ------------------------------------------------------------------------------------------


def test_cvqa_accuracy_per_subset_with_local_and_english_prompts(model, tmp_path):
    write_cvqa(tmp_path / "hub")
    out = tmp_path / "cvqa"
    summary = build("cvqa", tmp_path / "hub", out)
    assert summary["questions"] == 5
    assert summary["per_subset"] == {"Greek-Greece": 2, "Japanese-Japan": 3}
    assert summary["dropped"] == {"no_label": 1, "bad_options": 1}
    # the same records from a save_to_disk folder give the same set, byte for byte
    write_cvqa(tmp_path / "disk", arrow=True)
    build("cvqa", tmp_path / "disk", tmp_path / "cvqa_disk")
    assert (tmp_path / "cvqa_disk" / "test" / "0.tar").read_bytes() == (
        out / "test" / "0.tar"
    ).read_bytes()

    clip, tokenizer, transform = model
    result = evaluate.Evaluator(evaluate.open_benchmark(out)).run(clip, tokenizer, transform)
    samples = members(out)
    kept = [row for row in CVQA_ROWS if row[5] >= 0 and len(row[2]) == 4]
    images = image_embeddings(model, [s["jpg"] for s in samples])
    for how, (q, opts) in {"LOCAL": (1, 2), "EN": (3, 4)}.items():
        right = {}
        for row, image in zip(kept, images, strict=True):
            texts = text_embeddings(model, [f"{row[q]} {option}" for option in row[opts]])
            subset = row[0].strip("()").replace("'", "").replace(", ", "-")
            right.setdefault(subset, []).append(int((texts @ image).argmax()) == row[5])
        got = result["metrics"]
        everything = [r for rs in right.values() for r in rs]
        assert got[how]["acc"] == pytest.approx(sum(everything) / len(everything))
        per_subset = {s: sum(r) / len(r) for s, r in right.items()}
        for subset, acc in per_subset.items():
            assert got[f"{how}/{subset}"]["acc"] == pytest.approx(acc)
        assert got[how]["mean_subset_acc"] == pytest.approx(sum(per_subset.values()) / 2)


def test_cvqa_from_the_hub_without_answers_is_one_line(tmp_path, capsys):
    import pyarrow.parquet as pq
    from benchmark_fixtures import cvqa_table

    table = cvqa_table()
    table = table.set_column(table.schema.get_field_index("Label"), "Label", [[-1] * len(table)])
    pq.write_table(table, tmp_path / "test-00000-of-00001.parquet")
    assert datasets_main(["cvqa", str(tmp_path), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Label is -1" in err[0] and "leaderboard" in err[0]
