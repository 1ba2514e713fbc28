"""Zero-shot classification, image-text retrieval, multiple choice and linear probing on
CLIP_benchmark's WebDataset layout.

A caption-only model (`--loss caption`) classifies by caption likelihood: the class whose
templates have the highest mean log p(template(class) | image) under its decoder.

    python -m trainer.evaluate --checkpoint runs/x/checkpoints/step_00001000.pt \
        --task zeroshot_classification --dataset data/digits/zeroshot --output results.json
    torchrun --nproc_per_node=8 -m trainer.evaluate --model-dir exported/ --task retrieval ...

A dataset folder is what `clip_benchmark_export_wds` writes (test/{0..n-1}.tar, test/nshards.txt,
classnames.txt, zeroshot_classification_templates.txt, dataset_type.txt), so the same folders
serve both tools. Two additions, both optional: classnames.LANG.txt and
zeroshot_classification_templates.LANG.txt give a classification set in more languages (each
language classifies every image with its own names and templates), and a `json` member with
`lang` per sample (or `captions`: {language: [...]}) splits retrieval by caption language (each
language's captions rank among the images that have one, as per-language Crossmodal-3600 does,
plus their unweighted `mean`).
Three more, written by `python -m trainer.datasets`: classes.LANG.txt beside classnames.LANG.txt
lists the class indices a language names (Babel-ImageNet: it is scored on those classes' images,
choosing among them); dataset_type.txt `multiple_choice` marks a question set (CVQA: each json
has the question and options as asked and in English, `LOCAL` and `EN`, and a `subset`); a
train/ split beside test/ serves `--task linear_probe` (`trainer.linear_probe`).

Metrics are computed with torch and returned as Python floats (`.item()`): no `float()` of a
NumPy array, which numpy >= 2.4 refuses and which breaks CLIP_benchmark's and open_clip_train's
`accuracy()`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer import augment, data, distributed  # noqa: E402
from trainer.metrics import (  # noqa: E402, F401  (their home: trainer.metrics)
    classification_metrics,
    mean_per_class_recall,
    recall_at_k,
    retrieval_metrics,
    topk_accuracy,
)

TASKS = ("zeroshot_classification", "retrieval", "linear_probe", "multiple_choice")
PROMPTINGS = ("LOCAL", "EN")  # CVQA: the question and options as asked, and in English
DEFAULT_LANGUAGE = "en"  # what classnames.txt / templates without a suffix are in
ALL = "all"  # the retrieval result over every sample
MEAN = "mean"  # retrieval: the unweighted mean of the per-language results


# -- embeddings ----------------------------------------------------------------------------------


@torch.no_grad()
def embed(model, batches, transform, device, autocast) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised embeddings of `trainer.data` batch dicts; `transform` puts images on device."""
    images, texts = [], []
    for batch in batches:
        with autocast():
            images.append(model.encode_image(transform(batch)).float())
            texts.append(model.encode_text(batch["tokens"].to(device)).float())
    return F.normalize(torch.cat(images), dim=-1), F.normalize(torch.cat(texts), dim=-1)


# -- datasets in CLIP_benchmark's layout ---------------------------------------------------------


@dataclass
class BenchmarkSet:
    root: Path
    task: str
    urls: list[str]
    classnames: dict[str, list[str]] = field(default_factory=dict)
    templates: dict[str, list[str]] = field(default_factory=dict)
    # the class indices a language's names cover, when fewer than all (Babel-ImageNet)
    classes: dict[str, list[int]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.root.name


def _read_lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def open_benchmark(root: str | Path, task: str | None = None, split: str = "test") -> BenchmarkSet:
    """The shards, task and (for classification) class names and templates per language."""
    root = Path(root)
    split_dir = root / split
    if not split_dir.is_dir():
        raise ValueError(f"{root}: no {split}/ folder (CLIP_benchmark's WebDataset layout)")
    nshards = split_dir / "nshards.txt"
    if nshards.is_file():
        urls = [str(split_dir / f"{i}.tar") for i in range(int(nshards.read_text().strip()))]
        missing = [u for u in urls if not Path(u).is_file()]
        if missing:
            raise ValueError(f"{root}: nshards.txt lists {len(urls)} shards, {missing[0]} missing")
    else:
        urls = sorted(str(p) for p in split_dir.glob("*.tar"))
    if not urls:
        raise ValueError(f"{split_dir}: no .tar shards")
    type_file = root / "dataset_type.txt"
    kind = type_file.read_text().strip().lower() if type_file.is_file() else "classification"
    found = kind if kind in ("retrieval", "multiple_choice") else "zeroshot_classification"
    if kind == "multilabel":
        raise ValueError(f"{root}: multilabel classification is not supported")
    if task == "linear_probe" and found == "zeroshot_classification":
        found = task  # a classification set with a train/ split beside test/
    if task is not None and task != found:
        raise ValueError(f"{root} is a {found} set (dataset_type.txt), not {task}")
    bench = BenchmarkSet(root, found, urls)
    if found == "zeroshot_classification":
        files = sorted(root.glob("classnames*.txt"), key=lambda f: (f.name != "classnames.txt", f))
        for path in files:
            lang = path.name[len("classnames.") : -len(".txt")] or DEFAULT_LANGUAGE
            templates = root / f"zeroshot_classification_templates{path.name[10:-4]}.txt"
            if not templates.is_file():
                raise ValueError(f"{path} has no {templates.name} beside it")
            if lang in bench.classnames:
                continue  # classnames.en.txt beside classnames.txt
            bench.classnames[lang] = _read_lines(path)
            bench.templates[lang] = _read_lines(templates)
            covered = root / f"classes{path.name[10:]}"
            if covered.is_file():
                try:
                    indices = [int(x) for x in _read_lines(covered)]
                except ValueError:
                    raise ValueError(f"{covered}: not one class index per line") from None
                if len(indices) != len(bench.classnames[lang]):
                    raise ValueError(f"{covered} and {path.name} differ in length")
                if min(indices, default=0) < 0 or len(set(indices)) != len(indices):
                    raise ValueError(f"{covered}: class indices must be distinct and >= 0")
                bench.classes[lang] = indices
        if not bench.classnames:
            raise ValueError(f"{root}: no classnames.txt for zero-shot classification")
        sizes = {n: len(names) for n, names in bench.classnames.items() if n not in bench.classes}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"{root}: class name files differ in length: {sizes}")
    return bench


@dataclass
class Samples:
    """Everything but the pixels, for every sample of the set (each rank holds all of it)."""

    labels: list[int] = field(default_factory=list)
    captions: list[list[str]] = field(default_factory=list)
    caption_langs: list[list[str | None]] = field(default_factory=list)  # one per caption
    choices: list[dict[str, list[str]]] = field(default_factory=list)  # multiple choice
    langs: list[str | None] = field(default_factory=list)
    dropped: Counter = field(default_factory=Counter)


def read_samples(bench: BenchmarkSet, rank: int = 0, world_size: int = 1, max_samples=None):
    """(Samples, images): every sample's label or captions and language, and this rank's share
    of the images as (index, encoded bytes): every world_size-th (`per_image` decodes them).
    Samples without an image, label or caption are dropped here, counted, on all ranks alike."""
    samples, images, counters = Samples(), [], Counter()
    for url in bench.urls:
        for _, sample in data.read_shard(url, lambda k: True, counters):
            if max_samples is not None and len(samples.langs) >= max_samples:
                break
            raw = data.image_bytes(sample)
            if raw is None:
                samples.dropped["missing_image"] += 1
                continue
            meta = _json(sample)
            if bench.task == "retrieval":
                caps, langs = _captions(sample, meta)
                if not caps:
                    samples.dropped["missing_text"] += 1
                    continue
                samples.captions.append(caps)
                samples.caption_langs.append(langs)
            elif bench.task == "multiple_choice":
                question = _choices(meta)
                if question is None:
                    samples.dropped["bad_question"] += 1
                    continue
                samples.labels.append(question[0])
                samples.choices.append(question[1])
            else:
                try:
                    samples.labels.append(int(sample.get("cls", b"").decode().strip()))
                except ValueError:
                    samples.dropped["missing_label"] += 1
                    continue
            # a multiple-choice question's subset (CVQA: language and country) takes the
            # place of the caption language: accuracy is reported per subset
            lang = meta.get("subset" if bench.task == "multiple_choice" else "lang")
            index = len(samples.langs)
            samples.langs.append(lang)
            if index % world_size == rank:
                images.append((index, raw))
    if counters["bad_shard"]:  # samples an unreadable shard lost, as in training (DROP_REASONS)
        samples.dropped["bad_shard"] += counters["bad_shard"]
    return samples, images


def _json(sample: dict) -> dict:
    """A sample's `json` member as a dict ({} when absent or not a JSON object)."""
    try:
        meta = json.loads(sample.get("json") or b"{}")
    except ValueError:
        return {}
    return meta if isinstance(meta, dict) else {}


def _captions(sample: dict, meta: dict) -> tuple[list[str], list[str | None]]:
    """(captions, the language of each): the json's `captions` {language: [...]} when it has
    them (one sample per image of a multilingual set, XM3600), else the lines of `txt`, all in
    the json's `lang`."""
    by_lang = meta.get("captions")
    if isinstance(by_lang, dict):
        pairs = [
            (" ".join(c.split()), lang)
            for lang, caps in by_lang.items()
            if isinstance(caps, list)
            for c in caps
            if isinstance(c, str) and c.strip()
        ]
        return [c for c, _ in pairs], [lang for _, lang in pairs]
    text = sample.get("txt", b"").decode("utf-8", errors="replace")
    caps = [c.strip() for c in text.splitlines() if c.strip()]
    return caps, [meta.get("lang")] * len(caps)


def _choices(meta: dict) -> tuple[int, dict[str, list[str]]] | None:
    """(label, {prompting: the texts of the options}) of a multiple-choice sample's json, or
    None when it lacks them. A text is the question, a space and the option, as MetaCLIP's
    `clipeval/cvqa/eval_cvqa.py` builds it."""
    try:
        label, prompts = int(meta["label"]), meta["prompts"]
        choices = {
            how: [f"{prompts[how]['question']} {option}" for option in prompts[how]["options"]]
            for how in PROMPTINGS
            if how in prompts
        }
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    sizes = {len(texts) for texts in choices.values()}
    if not choices or len(sizes) != 1 or not 0 <= label < sizes.pop():
        return None
    return label, choices


def _subset(samples: Samples, keep: list[int]) -> Samples:
    return Samples(
        labels=[samples.labels[i] for i in keep] if samples.labels else [],
        captions=[samples.captions[i] for i in keep] if samples.captions else [],
        caption_langs=[samples.caption_langs[i] for i in keep] if samples.caption_langs else [],
        choices=[samples.choices[i] for i in keep] if samples.choices else [],
        langs=[samples.langs[i] for i in keep],
        dropped=samples.dropped,
    )


def _image_batch(images: list[torch.Tensor]) -> dict:
    pixels, sizes = data.pad_to_canvas(images)
    boxes, flips, _, _ = data.crop_params(sizes, 0, train=False, hflip=False)
    return {"pixels": pixels, "sizes": sizes, "boxes": boxes, "flips": flips, "train": False}


def gather_rows(indices: list[int], rows: torch.Tensor, n: int, info) -> torch.Tensor:
    """The n x D tensor of every rank's rows placed at their global indices."""
    out = torch.zeros(n, rows.shape[1], dtype=rows.dtype, device=rows.device)
    idx = torch.tensor(indices, dtype=torch.long, device=rows.device)
    out[idx] = rows
    if info is not None and info.enabled:
        dist.all_reduce(out)  # each row is non-zero on exactly one rank
    return out


# -- the evaluation ------------------------------------------------------------------------------


class Evaluator:
    """One dataset, evaluated on every rank's share of it; results are identical on all ranks."""

    def __init__(self, bench: BenchmarkSet, languages=None, batch_size=256, max_samples=None):
        self.bench, self.batch_size, self.max_samples = bench, batch_size, max_samples
        self.train_split = None
        if bench.task == "linear_probe":  # the probe is fitted on the train/ split's features
            train = open_benchmark(bench.root, "linear_probe", split="train")
            # read as what it is, labelled images (a probe task here would need its own probe)
            train = replace(train, task="zeroshot_classification")
            self.train_split = Evaluator(train, None, batch_size, max_samples)
        if bench.task == "zeroshot_classification":
            available = list(bench.classnames)
            self.languages = list(languages) if languages else available
            unknown = [lang for lang in self.languages if lang not in bench.classnames]
            if unknown:
                raise ValueError(
                    f"{bench.root}: no class names for {unknown} (has {', '.join(available)})"
                )
        else:
            self.languages = list(languages) if languages else None
        self._cache = None

    def _data(self, info):
        if self._cache is None:  # read once, reused at every periodic evaluation
            rank, world = (info.rank, info.world_size) if info is not None else (0, 1)
            self._cache = read_samples(self.bench, rank, world, self.max_samples)
        return self._cache

    @torch.no_grad()
    def per_image(self, fn, transform, autocast, info) -> tuple[torch.Tensor, list]:
        """(n x D rows fn(images) of every sample, the indices whose image decoded): each rank
        computes its share, batched, and the rows are summed into place across ranks."""
        samples, images = self._data(info)
        # decoded now (a JPEG much larger than the model input at a reduced DCT scale, as the
        # training workers do): only the encoded bytes stay in memory between evaluations
        ok = [(i, data.decode_image(raw, transform.size)) for i, raw in images]
        ok = [(i, p) for i, p in ok if p is not None]
        rows = []
        for chunk in self._batches(ok, info, transform.device):
            with autocast():
                if chunk:
                    rows.append(fn(transform(_image_batch([p for _, p in chunk]))).float())
                else:  # this rank's share is done: a forward the others need, result unused
                    size = transform.size
                    blank = _image_batch([torch.zeros(size, size, 3, dtype=torch.uint8)])
                    rows.append(fn(transform(blank)).float()[:0])
        n = len(samples.langs)
        out = gather_rows([i for i, _ in ok], torch.cat(rows), n, info)
        decoded = torch.zeros(n, 1, device=transform.device)
        decoded[[i for i, _ in ok]] = 1
        decoded = gather_rows(list(range(n)), decoded, n, info)  # sums the ranks' flags
        # one copy to the host, not a device sync per sample
        return out, torch.nonzero(decoded[:, 0] > 0).flatten().tolist()

    def image_embeddings(self, model, transform, autocast, info) -> tuple[torch.Tensor, list]:
        """(n x D normalised embeddings of every sample, the indices whose image decoded)."""
        return self.per_image(
            lambda x: F.normalize(model.encode_image(x), dim=-1), transform, autocast, info
        )

    def likelihood_scores(self, model, tokenizer, transform, autocast, info):
        """({language: n x classes mean over templates of log p(template(class) | image)},
        decoded indices): zero-shot classification of a caption-only model."""
        texts, spans = [], {}
        for lang in self.languages:
            names, templates = self.bench.classnames[lang], self.bench.templates[lang]
            start = len(texts)
            texts += [t.replace("{c}", name) for name in names for t in templates]
            spans[lang] = (start, len(texts), len(names), len(templates))
        tokens = tokenizer(texts).to(transform.device)
        scores, decoded = self.per_image(
            lambda x: model.log_likelihood(x, tokens), transform, autocast, info
        )
        out = {}
        for lang, (start, end, n_classes, n_templates) in spans.items():
            out[lang] = scores[:, start:end].view(-1, n_classes, n_templates).mean(dim=2)
        return out, decoded

    @torch.no_grad()
    def text_embeddings(self, model, tokenizer, texts, autocast, device, info=None):
        """Normalised embeddings of `texts`; with `info`, each rank encodes its share."""
        rank, world = (info.rank, info.world_size) if info is not None else (0, 1)
        mine = list(range(rank, len(texts), world))
        rows = []
        for chunk in self._batches(mine, info, device):
            with autocast():
                if chunk:
                    tokens = tokenizer([texts[i] for i in chunk]).to(device)
                    rows.append(F.normalize(model.encode_text(tokens).float(), dim=-1))
                else:  # this rank's share is done: a forward the others need, result unused
                    rows.append(model.encode_text(tokenizer(["x"]).to(device)).float()[:0])
        return gather_rows(mine, torch.cat(rows), len(texts), info)

    def _batches(self, mine: list, info, device):
        """This rank's items in batches, as many batches as any rank needs (at least one): the
        ones past its share are empty, for a forward whose result is unused. Under FSDP every
        forward gathers parameters from all ranks, so a rank whose share ended a batch earlier
        (shares that straddle a multiple of the batch size, undecodable images) would leave the
        others waiting for it until the timeout."""
        count = max(1, -(-len(mine) // self.batch_size))
        if info is not None and info.enabled:
            most = torch.tensor([count], device=device)
            dist.all_reduce(most, op=dist.ReduceOp.MAX)
            count = int(most.item())
        for b in range(count):
            yield mine[b * self.batch_size : (b + 1) * self.batch_size]

    def classifier(self, model, tokenizer, lang, autocast, device, info=None) -> torch.Tensor:
        """classes x D: the mean of each class's normalised template embeddings, renormalised
        (with `info`, each rank encodes its share of the texts)."""
        names, templates = self.bench.classnames[lang], self.bench.templates[lang]
        texts = [t.replace("{c}", name) for name in names for t in templates]
        emb = self.text_embeddings(model, tokenizer, texts, autocast, device, info)
        emb = emb.view(len(names), len(templates), -1).mean(dim=1)
        return F.normalize(emb, dim=-1)

    def run(self, model, tokenizer, transform, autocast=contextlib.nullcontext, info=None):
        """{"task", "dataset", "samples", "dropped", "metrics": {language: {metric: value}}}."""
        was_training = model.training
        model.eval()
        try:
            samples, _ = self._data(info)
            if not samples.langs:
                raise ValueError(f"{self.bench.root}: no usable samples ({dict(samples.dropped)})")
            device = transform.device
            if self.bench.task == "linear_probe":
                metrics, bad = self._linear_probe(model, transform, autocast, info)
                return self._result(samples, metrics, samples.dropped + bad)
            by_likelihood = not getattr(model, "has_text_tower", True)
            if by_likelihood and self.bench.task != "zeroshot_classification":
                raise ValueError(
                    f"a caption-only model has no text embeddings for {self.bench.task}; "
                    "evaluate it with zero-shot classification (caption likelihood)"
                )
            if by_likelihood:
                likelihood, decoded = self.likelihood_scores(
                    model, tokenizer, transform, autocast, info
                )
            else:
                images, decoded = self.image_embeddings(model, transform, autocast, info)
            dropped = Counter(samples.dropped)
            if len(decoded) < len(samples.langs):
                dropped["bad_image"] += len(samples.langs) - len(decoded)
                samples = _subset(samples, decoded)
                if by_likelihood:
                    likelihood = {lang: v[decoded] for lang, v in likelihood.items()}
                else:
                    images = images[decoded]
            if self.bench.task == "zeroshot_classification":
                metrics = self._classification(
                    samples, model, tokenizer, autocast, device, info,
                    likelihood if by_likelihood else None, None if by_likelihood else images,
                )  # fmt: skip
            elif self.bench.task == "multiple_choice":
                metrics = self._multiple_choice(samples, images, model, tokenizer, autocast, info)
            else:
                texts = [c for caps in samples.captions for c in caps]
                owner = [i for i, caps in enumerate(samples.captions) for _ in caps]
                text_langs = [lang for langs in samples.caption_langs for lang in langs]
                text_emb = self.text_embeddings(model, tokenizer, texts, autocast, device, info)
                metrics = {ALL: _retrieval(images, text_emb, owner, text_langs, None, info)}
                langs = sorted({lang for lang in text_langs if lang})
                for lang in self.languages or langs:
                    if lang in langs:
                        metrics[lang] = _retrieval(images, text_emb, owner, text_langs, lang, info)
                if len(metrics) > 2:  # XM3600's headline: the unweighted mean over languages
                    metrics[MEAN] = _mean([m for lang, m in metrics.items() if lang != ALL])
            return self._result(samples, metrics, dropped)
        finally:
            model.train(was_training)

    def _classification(
        self, samples, model, tokenizer, autocast, device, info, likelihood, images
    ):
        """{language: metrics} of zero-shot classification. A language whose names cover only
        some classes (classes.LANG.txt, Babel-ImageNet) is scored on the images of those
        classes, choosing among those classes only."""
        target = torch.tensor(samples.labels, device=device)
        full = [
            len(n) for lang, n in self.bench.classnames.items() if lang not in self.bench.classes
        ]
        n_classes = max(full or [max(max(c) for c in self.bench.classes.values()) + 1])
        if int(target.max()) >= n_classes or int(target.min()) < 0:
            raise ValueError(f"{self.bench.root}: a label is outside 0..{n_classes - 1}")
        beyond = [lang for lang, c in self.bench.classes.items() if max(c) >= n_classes]
        if beyond:
            raise ValueError(
                f"{self.bench.root}: classes.{beyond[0]}.txt names a class >= {n_classes}"
            )
        metrics = {}
        for lang in self.languages:
            if likelihood is not None:
                logits = likelihood[lang]
            else:
                weights = self.classifier(model, tokenizer, lang, autocast, device, info)
                logits = 100.0 * images @ weights.T
            if lang not in self.bench.classes:
                metrics[lang] = classification_metrics(logits, target)
                continue
            covered = torch.tensor(self.bench.classes[lang], device=device)
            position = torch.full((n_classes,), -1, dtype=torch.long, device=device)
            position[covered] = torch.arange(len(covered), device=device)
            rows = position[target] >= 0
            if not bool(rows.any()):
                continue  # no image of the classes this language names
            metrics[lang] = classification_metrics(logits[rows], position[target[rows]])
            metrics[lang]["classes"], metrics[lang]["images"] = len(covered), int(rows.sum())
        return metrics

    def _multiple_choice(self, samples, images, model, tokenizer, autocast, info) -> dict:
        """{prompting: {acc, mean_subset_acc}, "prompting/subset": {acc}}: each question's
        answer is the option text whose normalised embedding is nearest the image's (MetaCLIP's
        `clipeval/cvqa`: no scale, no softmax); `acc` over all questions is MetaCLIP's
        CVQA-LOCAL / CVQA-EN, `mean_subset_acc` the mean over the subsets' accuracies."""
        device = images.device
        target = torch.tensor(samples.labels, device=device)
        counts = {len(texts) for c in samples.choices for texts in c.values()}
        if len(counts) > 1:
            raise ValueError(f"{self.bench.root}: questions with {sorted(counts)} options")
        metrics = {}
        for how in PROMPTINGS:
            asked = [i for i, c in enumerate(samples.choices) if how in c]
            if not asked:
                continue
            n_options = len(samples.choices[asked[0]][how])
            texts = [t for i in asked for t in samples.choices[i][how]]
            emb = self.text_embeddings(model, tokenizer, texts, autocast, device, info)
            sims = (emb.view(len(asked), n_options, -1) @ images[asked][:, :, None]).squeeze(2)
            right = (sims.argmax(dim=1) == target[asked]).double()
            by_subset = {}
            for row, i in enumerate(asked):
                by_subset.setdefault(samples.langs[i] or "", []).append(row)
            subset_acc = {
                name: right[rows].mean().item() for name, rows in sorted(by_subset.items())
            }
            metrics[how] = {
                "acc": right.mean().item(),
                "mean_subset_acc": sum(subset_acc.values()) / len(subset_acc),
                "questions": len(asked),
            }
            for name, acc in subset_acc.items():
                metrics[f"{how}/{name}"] = {"acc": acc, "questions": len(by_subset[name])}
        return metrics

    def _result(self, samples: Samples, metrics: dict, dropped=None) -> dict:
        return {
            "task": self.bench.task,
            "dataset": str(self.bench.root),
            "samples": len(samples.langs),
            "dropped": dict(samples.dropped if dropped is None else dropped),
            "metrics": metrics,
        }

    def labelled_features(self, model, transform, autocast, info):
        """(normalised image embeddings, labels) of the samples whose image decoded."""
        samples, _ = self._data(info)
        features, decoded = self.image_embeddings(model, transform, autocast, info)
        labels = torch.tensor([samples.labels[i] for i in decoded], device=features.device)
        return features[decoded], labels

    def _linear_probe(self, model, transform, autocast, info) -> tuple[dict, Counter]:
        """({"all": lp_acc1, lp_acc5, lp_mean_per_class_recall, lp_weight_decay}, the test
        images that did not decode): a linear classifier on the train split's frozen features
        (up to --max-samples of them, as for the test split), scored on this split's
        (`trainer.linear_probe`); every rank fits the same probe."""
        from trainer.linear_probe import linear_probe

        train_x, train_y = self.train_split.labelled_features(model, transform, autocast, info)
        if len(train_x) < 2:
            raise ValueError(
                f"{self.bench.root}/train: a linear probe needs 2 or more labelled images, "
                f"{len(train_x)} decoded"
            )
        test_x, test_y = self.labelled_features(model, transform, autocast, info)
        if not len(test_x):
            raise ValueError(f"{self.bench.root}: no test image decoded for the linear probe")
        n_classes = int(max(train_y.max(), test_y.max())) + 1
        with torch.enable_grad():
            metrics = {ALL: linear_probe(train_x, train_y, test_x, test_y, n_classes)}
        undecoded = len(self._data(info)[0].labels) - len(test_x)
        return metrics, Counter({"bad_image": undecoded} if undecoded else {})


def _retrieval(images, text_emb, owner, text_langs, lang, info=None) -> dict[str, float]:
    """Retrieval of the captions in language `lang` among the images that have one (all
    captions among all images when None)."""
    text_rows = [t for t, text_lang in enumerate(text_langs) if lang is None or text_lang == lang]
    keep = list(range(len(images))) if lang is None else sorted({owner[t] for t in text_rows})
    position = {i: p for p, i in enumerate(keep)}
    text_image = torch.tensor([position[owner[t]] for t in text_rows], device=images.device)
    out = retrieval_metrics(images[keep], text_emb[text_rows], text_image, info=info)
    out["images"], out["texts"] = len(keep), len(text_rows)
    return out


def _mean(results: list[dict]) -> dict[str, float]:
    """The unweighted mean of each recall over the per-language results."""
    keys = [key for key in results[0] if "recall" in key]
    return {key: sum(r[key] for r in results) / len(results) for key in keys}


def flat_metrics(name: str, result: dict) -> dict[str, float]:
    """{"NAME/METRIC": v} for the first language (classification) or all samples (retrieval),
    and {"NAME/LANG/METRIC": v} for every language: the keys of metrics.jsonl and TensorBoard."""
    out = {}
    for i, (lang, metrics) in enumerate(result["metrics"].items()):
        for metric, value in metrics.items():
            if i == 0:
                out[f"{name}/{metric}"] = value
            out[f"{name}/{lang}/{metric}"] = value
    return out


# -- command line --------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m trainer.evaluate",
        description="Zero-shot classification, retrieval, multiple choice (CVQA) or a linear "
        "probe of a trainer checkpoint or an open_clip local-dir model, on a dataset in "
        "CLIP_benchmark's WebDataset layout (python -m trainer.datasets writes XM3600, "
        "Babel-ImageNet and CVQA from their distributed files).",
    )
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument(
        "--checkpoint",
        help="a step_*.pt (or .dcp folder) written by trainer/train.py, local or at a URI "
        "(s3://..., as --remote-sync keeps them)",
    )
    model.add_argument("--model-dir", help="an open_clip local-dir folder (trainer.export)")
    p.add_argument(
        "--task",
        choices=TASKS,
        help="default: the dataset_type.txt (classification, retrieval or multiple_choice); "
        "linear_probe fits a logistic-regression probe on the train/ split's frozen image "
        "features (CLIP_benchmark's weight-decay search) and scores it on --split",
    )
    p.add_argument("--dataset", required=True, help="folder with test/*.tar (CLIP_benchmark)")
    p.add_argument("--split", default="test", help="sub-folder of the shards")
    p.add_argument(
        "--languages",
        help="comma list: classification languages (default: every classnames[.LANG].txt), or "
        "the caption languages to report for retrieval (default: all the samples carry)",
    )
    p.add_argument("--batch-size", type=int, default=256, help="images or texts per forward")
    p.add_argument("--max-samples", type=int, help="only the first N samples")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="autocast dtype")
    p.add_argument("--output", help="results JSON (default: print only)")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    from trainer import models

    args = parse_args(argv)
    languages = [x.strip() for x in args.languages.split(",")] if args.languages else None
    bench = open_benchmark(args.dataset, args.task, args.split)
    evaluator = Evaluator(bench, languages, args.batch_size, args.max_samples)
    info = distributed.init_distributed(args.device)
    if args.checkpoint:
        model, tokenizer, _ = models.load_checkpoint_model(args.checkpoint)
    else:
        model, tokenizer = models.load_model_dir(args.model_dir)
    model.to(info.device)
    transform = augment.DeviceTransform.for_model(model, info.device)

    def autocast():
        if args.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(info.device.type, dtype=torch.bfloat16)

    result = evaluator.run(model, tokenizer, transform, autocast, info)
    result["model"] = args.checkpoint or args.model_dir
    if info.is_main:
        text = json.dumps(result, indent=2)
        if args.output:
            Path(args.output).parent.mkdir(parents=True, exist_ok=True)
            Path(args.output).write_text(text + "\n", encoding="utf-8")
        print(text, flush=True)
    distributed.cleanup(info)
    return result


if __name__ == "__main__":
    try:
        main()
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
