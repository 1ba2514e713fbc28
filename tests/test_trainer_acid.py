"""ACID's scoring and selection on constructed losses (the digits run: test_trainer_eval)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from trainer import acid, train
from trainer.losses import TEACHER_KEYS, clip_loss, siglip_loss


def features(n: int, noise: list[float], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and texts where text i is image i plus noise[i]: the larger, the harder the pair."""
    g = torch.Generator().manual_seed(seed)
    images = F.normalize(torch.randn(n, 32, generator=g, dtype=torch.float64), dim=-1)
    scale = torch.tensor(noise, dtype=torch.float64)[:, None]
    texts = images + scale * torch.randn(n, 32, generator=g, dtype=torch.float64)
    return images, F.normalize(texts, dim=-1)


def angled_pairs(angles: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Image i = e_i, text i = cos(a_i) e_i + sin(a_i) e_(n+i): pair i has similarity cos(a_i)
    and every other pair 0, so each sample's loss grows with its angle alone."""
    n = len(angles)
    images = torch.eye(n, 2 * n, dtype=torch.float64)
    a = torch.tensor(angles, dtype=torch.float64)[:, None]
    shifted = torch.roll(images, n, dims=1)  # e_(n+i)
    texts = torch.cos(a) * images + torch.sin(a) * shifted
    return images, texts


def test_per_sample_losses_add_up_to_the_batch_loss():
    images, texts = features(12, [0.5] * 12, seed=0)
    scale, bias = torch.tensor(10.0, dtype=torch.float64), torch.tensor(-3.0, dtype=torch.float64)
    clip = acid.per_sample_loss("clip", images, texts, scale)
    assert clip.mean().item() == pytest.approx(clip_loss(images, texts, scale).item(), rel=1e-12)
    sig = acid.per_sample_loss("siglip", images, texts, scale, bias)
    whole = siglip_loss(images, texts, scale, bias, "gather").item() * 12
    assert sig.sum().item() == pytest.approx(whole, rel=1e-12)


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_selection_keeps_the_most_learnable(kind):
    """The learner finds pairs harder with the index (angle 0.1 .. 1.5); the reference finds
    the odd pairs as hard as the hardest (1.5) and the even ones easy (0.05). Learnable = hard
    for the learner, easy for the reference: the four hardest even pairs."""
    n = 16
    images, texts = angled_pairs([0.1 + 1.4 * i / (n - 1) for i in range(n)])
    learner = {
        "image_features": images,
        "text_features": texts,
        "logit_scale": torch.tensor(10.0, dtype=torch.float64),
        "logit_bias": torch.tensor(-5.0, dtype=torch.float64) if kind == "siglip" else None,
    }
    ref_images, ref_texts = angled_pairs([1.5 if i % 2 else 0.05 for i in range(n)])
    reference = dict(zip(TEACHER_KEYS, (ref_images, ref_texts, torch.tensor(10.0))))
    if kind == "siglip":  # a SigLIP reference: both scored with the sigmoid loss
        reference["teacher_logit_bias"] = torch.tensor(-5.0, dtype=torch.float64)
    scores = acid.learnability(learner, reference)
    chosen = acid.select(scores, 4)
    assert chosen.tolist() == sorted(chosen.tolist())  # original order kept
    assert set(chosen.tolist()) == set(torch.topk(scores, 4).indices.tolist())
    assert chosen.tolist() == [8, 10, 12, 14]
    # ties: the earlier sample wins
    assert acid.select(torch.tensor([1.0, 2.0, 2.0, 0.0]), 2).tolist() == [1, 2]


def test_counts_per_language_and_across_ranks(monkeypatch):
    counts = acid.SelectionCounts(torch.device("cpu"))
    ids = counts.lang_ids(["en", "de", "en", "ja"])
    counts.add_kept(ids, torch.tensor([0, 3]))
    ids = counts.lang_ids(["de", "en"])
    counts.add_kept(ids, torch.tensor([0]))
    mine = counts.read()
    assert mine == {
        "de": {"drawn": 2, "kept": 1}, "en": {"drawn": 3, "kept": 1}, "ja": {"drawn": 1, "kept": 1}
    }  # fmt: skip
    earlier = acid.sum_counts([mine])  # a resumed run's totals from its checkpoint
    total = acid.sum_counts([mine, mine, earlier])
    assert total["all"] == {"drawn": 18, "kept": 9, "kept_share": 0.5}
    assert total["de"] == {"drawn": 6, "kept": 3, "kept_share": 0.5}
    # languages beyond the table count together as "other", kept ones included
    monkeypatch.setattr(acid.SelectionCounts, "MAX_LANGUAGES", 3)
    small = acid.SelectionCounts(torch.device("cpu"))
    ids = small.lang_ids(["en", "de", "ja", "ko", "en"])
    small.add_kept(ids, torch.tensor([1, 2, 3]))
    assert small.read() == {
        "de": {"drawn": 1, "kept": 1}, "en": {"drawn": 2, "kept": 0},
        "other": {"drawn": 2, "kept": 2},
    }  # fmt: skip


def test_acid_flags_that_cannot_work(capsys):
    for argv, message in (
        (["--acid-ratio", "2"], "needs a reference"),
        (["--acid-ratio", "0.5"], "is >= 1"),
        (["--reference-model", "a", "--reference-pretrained", "b"], "needs --acid-ratio > 1"),
        (["--acid-ratio", "2", "--reference-model", "a", "--reference-pretrained", "b",
          "--loss", "siglip+caption"], "scores contrastive losses"),
    ):  # fmt: skip
        with pytest.raises(SystemExit):
            train.parse_args(["--train-data", "x", *argv])
        assert message in capsys.readouterr().err
