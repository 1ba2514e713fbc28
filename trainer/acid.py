"""Active data curation (ACID, used by SigLIP 2 for its B/16 and B/32): train on the samples
the learner finds hard and a reference model finds easy.

Each rank draws `--acid-ratio` F x batch samples (a super-batch), scores each sample's
learnability = learner loss - reference loss, both per-sample contrastive losses *within the
super-batch* (the learner's current weights in eval mode, no gradient; the reference is a
frozen `distill.Teacher`), and trains on the `batch` samples with the highest learnability.

Selection is the per-sample top-k, not the paper's joint selection (JEST-style: chunks drawn
one after another, each conditioned on the ones already picked, scoring batch-level
learnability). Why: top-k is one sort per rank, deterministic, needs no extra forward per
chunk, and is the first-order term of the joint score (a sample's contribution to the batch
loss); the joint method matters most at high filtering ratios (the paper's 80-90%), where
top-k picks clusters of mutually hard negatives. At F = 2 the difference is small; the joint
form is left for when a GPU can measure it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def per_sample_loss(
    kind: str,
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Each sample's share of the contrastive loss within this batch: for clip the mean of its
    image->text and text->image cross-entropies (their mean over the batch is `clip_loss`), for
    siglip the sum of its row and column sigmoid terms halved (their sum over the batch is the
    rank's sigmoid loss x n)."""
    logits = logit_scale * image_features @ text_features.T
    n = logits.shape[0]
    if kind == "clip":
        labels = torch.arange(n, device=logits.device)
        rows = F.cross_entropy(logits, labels, reduction="none")
        columns = F.cross_entropy(logits.T, labels, reduction="none")
        return (rows + columns) / 2
    if logit_bias is not None:
        logits = logits + logit_bias
    signs = 2 * torch.eye(n, device=logits.device, dtype=logits.dtype) - 1
    terms = -F.logsigmoid(signs * logits)
    return (terms.sum(1) + terms.sum(0)) / 2


def learnability(learner: dict, reference: dict) -> torch.Tensor:
    """learner loss - reference loss per sample; `learner` is the model's output dict,
    `reference` a `distill.Teacher.features` dict. Both are scored with the reference's kind
    of loss: sigmoid when it has a bias (a SigLIP reference), else softmax (a CLIP; a siglip
    learner is then scored with softmax too, on its own scale), so the two losses compare."""
    bias = reference.get("teacher_logit_bias")
    kind = "siglip" if bias is not None else "clip"
    ours = per_sample_loss(
        kind,
        learner["image_features"].float(),
        learner["text_features"].float(),
        learner["logit_scale"].float(),
        learner.get("logit_bias"),
    )
    theirs = per_sample_loss(
        kind,
        reference["teacher_image_features"],
        reference["teacher_text_features"],
        reference["teacher_logit_scale"],
        bias,
    )
    return ours - theirs


def select(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Indices of the `keep` highest scores, in their original order (ties: the earlier)."""
    order = torch.argsort(-scores, stable=True)[:keep]
    return order.sort().values


class SelectionCounts:
    """Drawn and kept samples per language: drawn counted on the host from the batch's
    languages, kept on the device (no sync per step), both read at log lines. Languages past
    the first MAX_LANGUAGES - 1 are counted together as "other"."""

    MAX_LANGUAGES = 1024
    OTHER = "other"

    def __init__(self, device: torch.device):
        self.ids: dict[str, int] = {self.OTHER: self.MAX_LANGUAGES - 1}
        self.drawn: dict[str, int] = {}
        self.kept = torch.zeros(self.MAX_LANGUAGES, dtype=torch.long, device=device)

    def lang_ids(self, langs: list[str]) -> torch.Tensor:
        ids = []
        for lang in langs:
            if lang not in self.ids and len(self.ids) < self.MAX_LANGUAGES:
                self.ids[lang] = len(self.ids) - 1  # 0, 1, ...; OTHER keeps the last slot
            name = lang if lang in self.ids else self.OTHER
            self.drawn[name] = self.drawn.get(name, 0) + 1
            ids.append(self.ids[name])
        return torch.tensor(ids, dtype=torch.long)

    def add_kept(self, lang_ids: torch.Tensor, chosen: torch.Tensor) -> None:
        self.kept.index_add_(0, lang_ids[chosen], torch.ones_like(chosen))

    def read(self) -> dict:
        """{lang: {"drawn", "kept"}} of this rank since it started."""
        kept = self.kept.tolist()
        return {
            lang: {"drawn": drawn, "kept": kept[self.ids[lang]]}
            for lang, drawn in sorted(self.drawn.items())
        }


def sum_counts(parts: list[dict]) -> dict:
    """`SelectionCounts.read` of every rank (and a resumed run's earlier totals) summed: per
    language, and "all", each with its kept share."""
    total: dict[str, dict] = {}
    for part in parts:
        for lang, c in part.items():
            if lang == "all":
                continue
            t = total.setdefault(lang, {"drawn": 0, "kept": 0})
            t["drawn"] += c["drawn"]
            t["kept"] += c["kept"]
    total["all"] = {
        "drawn": sum(t["drawn"] for t in total.values()),
        "kept": sum(t["kept"] for t in total.values()),
    }
    for t in total.values():
        t["kept_share"] = t["kept"] / t["drawn"] if t["drawn"] else 0.0
    return total
