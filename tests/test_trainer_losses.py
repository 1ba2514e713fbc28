"""CLIP and SigLIP losses against their textbook formulas, alone and split over 2 gloo ranks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.conftest import free_port
from trainer.losses import clip_loss, siglip_loss

N, D, WORLD = 6, 5, 2


def features(seed: int, n: int = N) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.nn.functional.normalize(
        torch.randn(n, D, generator=g, dtype=torch.float64), dim=1
    )
    texts = torch.nn.functional.normalize(
        torch.randn(n, D, generator=g, dtype=torch.float64), dim=1
    )
    return images, texts


def clip_by_formula(images, texts, scale: float) -> float:
    """(1/2n) sum_i [-log softmax_j(s x_i.y_j)[i] - log softmax_j(s y_i.x_j)[i]], written out."""
    n = len(images)
    total = 0.0
    for i in range(n):
        sims_i = [scale * float(images[i] @ texts[j]) for j in range(n)]
        sims_t = [scale * float(texts[i] @ images[j]) for j in range(n)]
        total += -sims_i[i] + math.log(sum(math.exp(s) for s in sims_i))
        total += -sims_t[i] + math.log(sum(math.exp(s) for s in sims_t))
    return total / (2 * n)


def siglip_by_formula(images, texts, scale: float, bias: float) -> float:
    """-(1/n) sum_ij log sigmoid(z_ij (s x_i.y_j + b)), z_ij = 1 if i == j else -1."""
    n = len(images)
    total = 0.0
    for i in range(n):
        for j in range(n):
            z = 1.0 if i == j else -1.0
            logit = scale * float(images[i] @ texts[j]) + bias
            total += -math.log(1 / (1 + math.exp(-z * logit)))
    return total / n


def test_clip_loss_matches_formula():
    images, texts = features(0)
    scale = torch.tensor(7.5, dtype=torch.float64)
    got = clip_loss(images, texts, scale).item()
    assert got == pytest.approx(clip_by_formula(images, texts, 7.5), rel=1e-12)
    # perfectly aligned, sharp pairs give a loss near zero; a wrong pairing does not
    assert clip_loss(images, images, torch.tensor(100.0, dtype=torch.float64)) < 0.05
    assert clip_loss(images, images.roll(1, 0), torch.tensor(100.0, dtype=torch.float64)) > 1


def test_siglip_loss_matches_formula_at_its_initialisation():
    images, texts = features(1)
    scale, bias = math.exp(math.log(10)), -10.0
    got = siglip_loss(images, texts, torch.tensor(scale), torch.tensor(bias)).item()
    assert got == pytest.approx(siglip_by_formula(images, texts, scale, bias), rel=1e-12)
    # at init (t = 10, b = -10) each positive pair alone costs -log sigmoid(10 x.y - 10) >= log 2
    assert got > math.log(2)


def _rank_main(rank: int, port: int, results):
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
    )
    images, texts = features(2, N * WORLD)
    rows = slice(rank * N, (rank + 1) * N)
    out = {}
    for name in ("clip", "siglip"):
        local_images = images[rows].clone().requires_grad_()
        local_texts = texts[rows].clone().requires_grad_()
        scale = torch.tensor(4.0, dtype=torch.float64, requires_grad=True)
        bias = torch.tensor(-2.0, dtype=torch.float64, requires_grad=True)
        if name == "clip":
            loss = clip_loss(local_images, local_texts, scale)
        else:
            loss = siglip_loss(local_images, local_texts, scale, bias)
        loss.backward()
        out[name] = (loss.item(), local_images.grad, local_texts.grad, scale.grad)
    results[rank] = out
    dist.destroy_process_group()


def _chunked_main(rank: int, world: int, port: int, results):
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    images, texts = features(3, N * world)
    rows = slice(rank * N, (rank + 1) * N)
    out = {}
    for exchange in ("gather", "bidir", "shift"):
        local_images = images[rows].clone().requires_grad_()
        local_texts = texts[rows].clone().requires_grad_()
        scale = torch.tensor(4.0, dtype=torch.float64, requires_grad=True)
        bias = torch.tensor(-2.0, dtype=torch.float64, requires_grad=True)
        loss = siglip_loss(local_images, local_texts, scale, bias, exchange)
        loss.backward()
        out[exchange] = (loss.item(), local_images.grad, local_texts.grad, scale.grad, bias.grad)
    results[rank] = out
    dist.destroy_process_group()


@pytest.mark.parametrize("world", [2, 4])
def test_chunked_siglip_equals_the_all_gather_form(world):
    """Neighbour exchange (bidir: both directions, shift: a ring) gives the all-gather loss and
    every gradient to float64 rounding, at 2 and 4 ranks (4 = one bidir round + one shift)."""
    results = mp.Manager().dict()
    mp.spawn(_chunked_main, args=(world, free_port(), results), nprocs=world, join=True)
    images, texts = features(3, N * world)
    by_formula = siglip_by_formula(images, texts, 4.0, -2.0)
    for rank in range(world):
        gathered = results[rank]["gather"]
        for exchange in ("bidir", "shift"):
            chunked = results[rank][exchange]
            assert chunked[0] == pytest.approx(gathered[0], rel=1e-12)
            for got, expected in zip(chunked[1:], gathered[1:]):
                torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    assert sum(results[r]["bidir"][0] for r in range(world)) / world == pytest.approx(by_formula)
    with pytest.raises(ValueError, match="exchange"):
        siglip_loss(images, texts, torch.tensor(1.0), torch.tensor(0.0), "ring")


def test_two_rank_gather_equals_full_batch_loss_and_gradient():
    results = mp.Manager().dict()
    mp.spawn(_rank_main, args=(free_port(), results), nprocs=WORLD, join=True)

    images, texts = features(2, N * WORLD)
    for name in ("clip", "siglip"):
        full_images = images.clone().requires_grad_()
        full_texts = texts.clone().requires_grad_()
        scale = torch.tensor(4.0, dtype=torch.float64, requires_grad=True)
        bias = torch.tensor(-2.0, dtype=torch.float64, requires_grad=True)
        if name == "clip":
            full = clip_loss(full_images, full_texts, scale)
            by_formula = clip_by_formula(images, texts, 4.0)
        else:
            # per-rank losses are normalised by the local batch; their mean is the full
            # loss normalised by the global batch
            full = siglip_loss(full_images, full_texts, scale, bias)
            by_formula = siglip_by_formula(images, texts, 4.0, -2.0)
        full.backward()
        per_rank = [results[r][name] for r in range(WORLD)]
        assert sum(r[0] for r in per_rank) / WORLD == pytest.approx(by_formula, rel=1e-12)
        assert full.item() == pytest.approx(by_formula, rel=1e-12)
        # each rank's backward sums every rank's loss, so its gradient is WORLD x d(mean)/dx;
        # DDP's averaging of the scale gradient gives d(mean)/ds
        for rank, (_, grad_images, grad_texts, _) in enumerate(per_rank):
            rows = slice(rank * N, (rank + 1) * N)
            torch.testing.assert_close(grad_images, WORLD * full_images.grad[rows])
            torch.testing.assert_close(grad_texts, WORLD * full_texts.grad[rows])
        mean_scale_grad = sum(r[3] for r in per_rank) / WORLD
        torch.testing.assert_close(mean_scale_grad, scale.grad)
