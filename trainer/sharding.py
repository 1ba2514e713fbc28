"""FSDP2 for models that do not fit one GPU under DDP (`--fsdp`).

Every transformer block (vision tower, text tower, caption decoder) and every token embedding
becomes one `fully_shard` unit, and the root takes what is left (projections, norms). A
rank holds 1/world of every parameter, gradient and AdamW moment; a block's parameters are
all-gathered just before its forward and backward and freed after. With bf16 the gathered
copies are bf16 and gradients are reduced in fp32 (`MixedPrecisionPolicy`).

`fully_shard` cannot shard 0-d parameters (open_clip's `logit_scale`, `logit_bias`): they
stay replicated, and `sync_replicated_grads` averages their gradients the way DDP would.

Gradient accumulation (`--accum-steps K`) reduce-scatters every micro-batch's gradients, and
the rank adds its shard to the shard it holds. The alternative, FSDP's no-sync mode
(`set_requires_gradient_sync(False)` until the last micro-batch), sends one reduce-scatter per
step instead of K, but holds every parameter's unsharded fp32 gradient through the step: ~7.4 GB
per rank for ViT-H-14-worldwide, twice the sharded state FSDP is there to cut. The price of
the choice is (K - 1) extra reduce-scatters per step, each of the whole fp32 gradient (the
reduce dtype under bf16); a step with K micro-batches already runs K backward passes, and each one's
reduce-scatter overlaps the next block's backward.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

FORWARD_METHODS = ("encode_image", "encode_text", "log_likelihood")


def transformer_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The residual blocks of every tower the model has, in module order."""
    blocks = []
    for module in model.modules():
        resblocks = getattr(module, "resblocks", None)
        if isinstance(resblocks, torch.nn.ModuleList):
            blocks.extend(resblocks)
        cross = getattr(module, "cross_attn", None)
        if isinstance(cross, torch.nn.ModuleList):
            blocks.extend(cross)
    return blocks


def embeddings(model: torch.nn.Module) -> list[torch.nn.Embedding]:
    """Token embeddings, each its own unit: XLM-V's is half of ViT-H-14-worldwide, and as a
    unit it is gathered only around the lookup, not for the root's whole forward."""
    return [m for m in model.modules() if isinstance(m, torch.nn.Embedding)]


def shard_model(model: torch.nn.Module, precision: str) -> list[torch.nn.Parameter]:
    """Apply fully_shard in place; returns the parameters left replicated."""
    from torch.distributed.fsdp import (
        MixedPrecisionPolicy,
        fully_shard,
        register_fsdp_forward_method,
    )

    policy = MixedPrecisionPolicy()
    if precision == "bf16":
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    elif precision == "fp16":
        raise ValueError("--fsdp supports --precision bf16 or fp32 (fp16 needs a sharded scaler)")
    blocks = transformer_blocks(model)
    if not blocks:
        raise ValueError(f"{type(model).__name__} has no transformer blocks to shard")
    # modules that run outside the model's forward (self-distillation's teacher) are units of
    # their own, after their blocks: their forward gathers what the blocks leave
    outside = [m for m in model.modules() if getattr(m, "fsdp_unit", False)]
    for unit in [*embeddings(model), *blocks, *outside]:
        fully_shard(unit, mp_policy=policy)
    replicated = [p for p in model.parameters() if p.dim() == 0]
    fully_shard(model, mp_policy=policy, ignored_params=set(replicated))
    # evaluation calls these instead of forward: they must gather the root's parameters too
    for method in FORWARD_METHODS:
        if callable(getattr(model, method, None)):
            register_fsdp_forward_method(model, method)
    return replicated


def sync_replicated_grads(params: list[torch.nn.Parameter]) -> None:
    """Average the gradients of the replicated parameters over ranks (what DDP does)."""
    world = dist.get_world_size()
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad.div_(world)


def local_bytes(tensors) -> int:
    """Bytes this rank holds for `tensors` (a DTensor counts its local shard)."""
    total = 0
    for t in tensors:
        if t is None:
            continue
        local = t.to_local() if hasattr(t, "to_local") else t
        total += local.numel() * local.element_size()
    return total


def training_state_bytes(model, optimizer) -> dict:
    """Per-rank bytes of parameters, gradients and optimizer state."""
    params = list(model.parameters())
    state = [v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
    return {
        "params": local_bytes(params),
        "grads": local_bytes(p.grad for p in params),
        "optimizer": local_bytes(state),
    }
