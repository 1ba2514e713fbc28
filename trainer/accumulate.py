"""One optimizer step's forward and backward over K micro-batches, the contrastive loss seeing
all of them (open_clip_train's `accum_freq` scheme).

1. Each micro-batch runs forward without gradient; its features are kept (K x batch rows).
2. Each micro-batch runs forward again with gradient, and the loss is computed on the cached
   features with that micro-batch's rows replaced by the live ones; backward then gives exactly
   that micro-batch's share of the full-batch gradient, so the K backward passes add up to the
   gradient of one step on all K x batch x world samples.

A caption loss (`caption`, `siglip+caption`) is per sample: each micro-batch adds its own
caption loss / K in its gradient pass, and `caption` alone skips the cached pass. So do the
self-distillation terms (`trainer.self_distill`: the micro-batch's local crops and masked view
against the teacher's targets for its own images): they run in the gradient pass only, never in
the cached one, and with equal micro-batches their sum / K is the full batch's mean. The
teacher's EMA and centres move once per optimizer step, after all K micro-batches.

The temperature (and SigLIP bias) take part with gradient in the last micro-step only: the loss
depends on them once, not K times (open_clip_train adds their gradient K times). The RNG state
of each no-gradient forward is replayed for its gradient forward, so patch dropout and the like
pick the same tokens both times. Under DDP the gradients are all-reduced in the last backward
only (`no_sync` before it).
"""

from __future__ import annotations

import contextlib

import torch

from trainer.losses import TEACHER_KEYS, compute_loss, contrastive_loss, loss_parts

FEATURE_KEYS = ("image_features", "text_features")
SHARED_KEYS = ("logit_scale", "logit_bias")


def _upcast(t: torch.Tensor) -> torch.Tensor:
    """Autocast outputs (bf16/fp16) to fp32 for the loss; fp32/fp64 stay as they are."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _rng_state(device: torch.device):
    return (
        torch.get_rng_state(),
        torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    )


def _set_rng_state(state, device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def _forward(model, micro_batch: tuple, autocast, cached: bool = False) -> dict:
    """model(images, tokens, **host inputs) of a micro-batch (images, tokens[, host inputs]);
    `cached`: the features-only pass, without the self-distillation inputs."""
    images, tokens, *host = micro_batch
    host = host[0] if host else {}
    if cached and "self_distill" in host:
        host = {k: v for k, v in host.items() if k != "self_distill"}
    with autocast():
        return model(images, tokens, **host)


def forward_backward(
    model,
    micro_batches: list[tuple[torch.Tensor, torch.Tensor]],
    loss_kind: str,
    *,
    autocast=contextlib.nullcontext,
    backward=lambda loss: loss.backward(),
    no_sync=None,
    caption_weight: float = 1.0,
    siglip_exchange: str = "auto",
    teacher: list[dict] | None = None,
    distill_weight: float = 1.0,
) -> torch.Tensor:
    """Forward + backward of one step; returns the (detached) loss of the whole step.

    A micro-batch is (images, tokens) or (images, tokens, keyword arguments of the model that
    the host computed, e.g. `CaptionModel.caption_plan`); `model(images, tokens)` returns
    open_clip's output dict; `no_sync` is the DDP module's `no_sync` (None when not distributed
    and under FSDP: see `sharding`). `teacher`: per micro-batch, a frozen teacher's features
    (`distill.Teacher.features`), which add the distillation term over the whole step."""
    k = len(micro_batches)
    teacher_inputs = {}
    if teacher:  # constant: every micro-batch's loss sees all of them, like the cached features
        teacher_inputs = {key: torch.cat([t[key] for t in teacher]) for key in TEACHER_KEYS[:2]}
        teacher_inputs[TEACHER_KEYS[2]] = teacher[0][TEACHER_KEYS[2]]
    if k == 1:
        out = _forward(model, micro_batches[0], autocast)
        outputs = {key: _upcast(v) for key, v in out.items()} | teacher_inputs
        loss = compute_loss(loss_kind, outputs, caption_weight, siglip_exchange, distill_weight)
        if "self_distill_loss" in out:
            loss = loss + out["self_distill_loss"]
        backward(loss)
        return loss.detach()

    contrastive, caption = loss_parts(loss_kind)
    device = micro_batches[0][0].device
    cached, rng = [], []
    if contrastive:
        with torch.no_grad():
            for micro_batch in micro_batches:
                rng.append(_rng_state(device))
                out = _forward(model, micro_batch, autocast, cached=True)
                cached.append({key: _upcast(out[key]) for key in FEATURE_KEYS})

    total = 0.0
    for j, micro_batch in enumerate(micro_batches):
        last = j == k - 1
        if contrastive:
            _set_rng_state(rng[j], device)
        sync = contextlib.nullcontext() if last or no_sync is None else no_sync()
        with sync:
            out = _forward(model, micro_batch, autocast)
            loss = 0.0
            if contrastive:
                inputs = {
                    key: torch.cat(
                        [c[key] for c in cached[:j]]
                        + [_upcast(out[key])]
                        + [c[key] for c in cached[j + 1 :]]
                    )
                    for key in FEATURE_KEYS
                }
                for key in SHARED_KEYS:
                    if key in out:
                        inputs[key] = _upcast(out[key]) if last else _upcast(out[key]).detach()
                inputs.update(teacher_inputs)
                loss = contrastive_loss(contrastive, inputs, siglip_exchange, distill_weight)
                if last:
                    total = total + loss.detach()  # the full-batch contrastive loss
            if caption:
                part = caption_weight * out["caption_loss"]
                loss = loss + part / k
                total = total + part.detach() / k
            if "self_distill_loss" in out:
                loss = loss + out["self_distill_loss"] / k
                total = total + out["self_distill_loss"].detach() / k
            backward(loss)
    return total
