"""Feature-cache accumulation: one K-micro-batch step has the gradient of one full-batch step,
in one process and on 2 gloo ranks under DDP and FSDP2 (the loss sees all K x batch x world
samples)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from tests.conftest import free_port

open_clip = pytest.importorskip("open_clip")

from trainer.accumulate import forward_backward  # noqa: E402
from trainer.losses import TEACHER_KEYS, compute_loss  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
K, B, WORLD = 3, 4, 2


def tiny_model(loss: str) -> torch.nn.Module:
    from trainer.models import register_configs

    register_configs()
    torch.manual_seed(0)
    extra = {"init_logit_bias": -2.0} if loss == "siglip" else {}
    model = open_clip.create_model("tiny-clip", output_dict=True, **extra).double()
    # a patch dropout draws random tokens in every forward: the accumulated step must replay it
    model.visual.patch_dropout = open_clip.transformer.PatchDropout(0.25)
    return model


def batch(n: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, 32, 32, generator=g, dtype=torch.float64)
    tokens = torch.randint(1, 49000, (n, 32), generator=g)
    return images, tokens


def teacher_features(seed: int = 5) -> list[dict]:
    """A frozen teacher's features per micro-batch (its own width, 48) and scale."""
    g = torch.Generator().manual_seed(seed)

    def rows():
        return F.normalize(torch.randn(B, 48, generator=g, dtype=torch.float64), dim=-1)

    scale = torch.tensor(20.0, dtype=torch.float64)
    return [dict(zip(TEACHER_KEYS, (rows(), rows(), scale))) for _ in range(K)]


@pytest.mark.parametrize(
    "loss_kind,distill", [("clip", False), ("siglip", False), ("clip", True), ("siglip", True)]
)
def test_accumulated_step_has_the_full_batch_gradient(loss_kind, distill):
    """With a teacher, the distillation term too is the full batch's (weight 0.7)."""
    images, tokens = batch(K * B)
    model = tiny_model(loss_kind)
    micro = list(zip(images.split(B), tokens.split(B), strict=True))
    teacher = teacher_features() if distill else None

    torch.manual_seed(123)
    states = []  # the RNG state each forward starts from

    def record_forward(module, args):
        states.append(torch.get_rng_state())

    hook = model.register_forward_pre_hook(record_forward)
    loss = forward_backward(model, micro, loss_kind, teacher=teacher, distill_weight=0.7)
    hook.remove()
    got = {n: p.grad.clone() for n, p in model.named_parameters()}
    # 2K forwards: K without gradient, then K with, each replaying its no-grad twin's RNG
    assert len(states) == 2 * K
    for j in range(K):
        assert torch.equal(states[j], states[K + j])

    # reference with the same per-micro-batch RNG states
    parts = []
    for (imgs, toks), state in zip(micro, states[:K], strict=True):
        torch.set_rng_state(state)
        parts.append(model(imgs, toks))
    out = {key: torch.cat([p[key] for p in parts]) for key in ("image_features", "text_features")}
    for key in ("logit_scale", "logit_bias"):
        if key in parts[0]:
            out[key] = parts[0][key]
    if teacher:
        out.update({key: torch.cat([t[key] for t in teacher]) for key in TEACHER_KEYS[:2]})
        out[TEACHER_KEYS[2]] = teacher[0][TEACHER_KEYS[2]]
        without = compute_loss(loss_kind, {k: v for k, v in out.items() if k not in TEACHER_KEYS})
        assert loss.item() > without.item()  # the term is there
    model.zero_grad()
    full = compute_loss(loss_kind, out, distill_weight=0.7)
    full.backward()
    assert loss.item() == pytest.approx(full.item(), rel=1e-12)
    for name, param in model.named_parameters():
        torch.testing.assert_close(got[name], param.grad, rtol=1e-9, atol=1e-12, msg=name)
    # the temperature's gradient is counted once, not K times
    assert got["logit_scale"].abs() > 0


def _rank_main(rank: int, port: int, loss_kind: str, results):
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
    )
    model = tiny_model(loss_kind)
    model.visual.patch_dropout = torch.nn.Identity()  # the reference runs in another process
    ddp = torch.nn.parallel.DistributedDataParallel(model, gradient_as_bucket_view=True)
    images, tokens = batch(WORLD * K * B)
    rows = slice(rank * K * B, (rank + 1) * K * B)
    micro = list(zip(images[rows].split(B), tokens[rows].split(B), strict=True))
    loss = forward_backward(ddp, micro, loss_kind, no_sync=ddp.no_sync)
    results[rank] = (loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()})
    results[("fsdp", rank)] = _fsdp_step(loss_kind, micro)
    results[("fsdp_locked", rank)] = _fsdp_locked_step(loss_kind, micro)
    dist.destroy_process_group()


def _fsdp_locked_step(loss_kind: str, micro) -> tuple[bool, dict]:
    """--lock-image under FSDP2: after the step no image-tower parameter has a gradient (none
    was reduce-scattered) and the others hold their shards; returns that and the full
    gradients of the trainable parameters."""
    from torch.distributed.tensor import DTensor

    from trainer import sharding

    model = tiny_model(loss_kind)
    model.visual.patch_dropout = torch.nn.Identity()
    model.lock_image_tower()
    replicated = sharding.shard_model(model, "fp32")
    forward_backward(model, micro, loss_kind)
    sharding.sync_replicated_grads(replicated)
    params = dict(model.named_parameters())
    no_image_grads = all(p.grad is None for n, p in params.items() if n.startswith("visual."))
    trainable = {n: p for n, p in params.items() if p.requires_grad}
    sharded = all(isinstance(p.grad, DTensor) for p in trainable.values() if isinstance(p, DTensor))
    grads = {n: getattr(p.grad, "full_tensor", lambda g=p.grad: g)() for n, p in trainable.items()}
    return no_image_grads and sharded and bool(trainable), grads


def _fsdp_step(loss_kind: str, micro) -> tuple:
    """The same step under FSDP2 as train.py runs it: a reduce-scatter after every micro-batch
    (no no-sync mode), so between micro-batches each rank holds its gradient shard only. Returns
    the loss, the full gradients, whether every sharded parameter's gradient was a shard after
    each backward, and the same check for FSDP's no-sync mode after the first backward."""
    from torch.distributed.tensor import DTensor

    from trainer import sharding

    def sharded_grads(model) -> bool:
        params = [p for p in model.parameters() if isinstance(p, DTensor)]
        return bool(params) and all(
            isinstance(p.grad, DTensor) and p.grad.to_local().numel() < p.numel() for p in params
        )

    model = tiny_model(loss_kind)
    model.visual.patch_dropout = torch.nn.Identity()
    replicated = sharding.shard_model(model, "fp32")
    held = []

    def backward(loss):
        loss.backward()
        held.append(sharded_grads(model))

    loss = forward_backward(model, micro, loss_kind, backward=backward)
    sharding.sync_replicated_grads(replicated)
    grads = {
        n: getattr(p.grad, "full_tensor", lambda g=p.grad: g)() for n, p in model.named_parameters()
    }

    deferred = tiny_model(loss_kind)
    sharding.shard_model(deferred, "fp32")
    deferred.set_requires_gradient_sync(False)  # the alternative: reduce-scatter once per step
    compute_loss(loss_kind, deferred(*micro[0])).backward()
    return loss.item(), grads, held, sharded_grads(deferred)


@pytest.mark.parametrize("loss_kind", ["clip", "siglip"])
def test_two_rank_accumulated_step_has_the_full_batch_gradient(loss_kind):
    results = mp.Manager().dict()
    mp.spawn(_rank_main, args=(free_port(), loss_kind, results), nprocs=WORLD, join=True)

    model = tiny_model(loss_kind)
    model.visual.patch_dropout = torch.nn.Identity()
    images, tokens = batch(WORLD * K * B)  # rank-major: rank 0's K micro-batches, then rank 1's
    out = model(images, tokens)
    full = compute_loss(loss_kind, out)
    full.backward()
    # each rank's loss covers its rows against the global batch; their mean is the full loss
    assert sum(results[r][0] for r in range(WORLD)) / WORLD == pytest.approx(full.item(), rel=1e-9)
    for rank in range(WORLD):
        grads = results[rank][1]
        for name, param in model.named_parameters():
            torch.testing.assert_close(grads[name], param.grad, rtol=1e-7, atol=1e-10, msg=name)
        # FSDP: the same gradient, and only gradient shards held between micro-batches
        loss, grads, held, deferred_held = results[("fsdp", rank)]
        assert loss == pytest.approx(results[rank][0], rel=1e-9)
        for name, param in model.named_parameters():
            torch.testing.assert_close(grads[name], param.grad, rtol=1e-7, atol=1e-10, msg=name)
        assert held == [True] * K
        assert not deferred_held  # no-sync mode holds the unsharded gradients elsewhere
        # a locked image tower: no gradient there, the text tower's gradient unchanged
        locked_ok, locked_grads = results[("fsdp_locked", rank)]
        assert locked_ok
        assert not any(n.startswith("visual.") for n in locked_grads) and locked_grads
        for name, grad in locked_grads.items():
            torch.testing.assert_close(grad, grads[name], rtol=1e-7, atol=1e-10, msg=name)
