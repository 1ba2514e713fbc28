"""Contrastive losses over the global batch, each rank computing only its own rows.

Every rank gathers the other ranks' features *with* gradient and scores its local
rows against the whole global batch. The mean of the per-rank losses equals the
full-batch loss, and DDP's gradient averaging then yields the full-batch gradient.

SigLIP's loss is a sum over (image, text) blocks, so it also has the chunked form of the SigLIP
paper: each rank scores its images against its own texts, then passes text features to its
neighbours world - 1 times (open_clip's `SigLipLoss`, `bidir`: both directions at once, or
`shift`: one ring), never holding the global batch's texts. It is the default when world > 1.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


class _GatherRows(torch.autograd.Function):
    """all_gather forward; backward sums every rank's gradient and keeps this rank's rows."""

    @staticmethod
    def forward(ctx, local: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(local) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, local.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)  # gloo has no reduce_scatter
        rows = grad.shape[0] // dist.get_world_size()
        return grad[dist.get_rank() * rows : (dist.get_rank() + 1) * rows]


def gather_with_grad(features: torch.Tensor) -> tuple[torch.Tensor, int]:
    """All ranks' features concatenated in rank order, and this rank's row offset."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return features, 0
    return _GatherRows.apply(features), dist.get_rank() * features.shape[0]


def clip_loss(
    image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor
) -> torch.Tensor:
    """InfoNCE in both directions; features are L2-normalised, logit_scale is exp(t)."""
    all_images, offset = gather_with_grad(image_features)
    all_texts, _ = gather_with_grad(text_features)
    labels = torch.arange(image_features.shape[0], device=image_features.device) + offset
    logits_per_image = logit_scale * image_features @ all_texts.T
    logits_per_text = logit_scale * text_features @ all_images.T
    image_loss = F.cross_entropy(logits_per_image, labels)
    text_loss = F.cross_entropy(logits_per_text, labels)
    return (image_loss + text_loss) / 2


SIGLIP_EXCHANGES = ("auto", "gather", "bidir", "shift")


def siglip_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor,
    exchange: str = "auto",
) -> torch.Tensor:
    """Pairwise sigmoid loss: local images against every text, normalised by local batch size.
    `exchange`: how texts reach the other ranks (auto: bidir when distributed)."""
    if exchange not in SIGLIP_EXCHANGES:
        raise ValueError(f"unknown SigLIP exchange {exchange!r} (choose {SIGLIP_EXCHANGES})")
    distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    if distributed and exchange != "gather":
        from open_clip.loss import SigLipLoss

        chunked = SigLipLoss(
            rank=dist.get_rank(),
            world_size=dist.get_world_size(),
            dist_impl="bidir" if exchange == "auto" else exchange,
        )
        return chunked(image_features, text_features, logit_scale, logit_bias)
    all_texts, offset = gather_with_grad(text_features)
    n = image_features.shape[0]
    logits = logit_scale * image_features @ all_texts.T + logit_bias
    signs = -torch.ones_like(logits)
    rows = torch.arange(n, device=logits.device)
    signs[rows, rows + offset] = 1.0
    return -F.logsigmoid(signs * logits).sum() / n


TEACHER_KEYS = ("teacher_image_features", "teacher_text_features", "teacher_logit_scale")


def soft_cross_entropy(teacher_logits: torch.Tensor, student_logits: torch.Tensor):
    """open_clip's DistillClipLoss.dist_loss: -sum(softmax(teacher) * log_softmax(student))."""
    return -(teacher_logits.softmax(dim=1) * student_logits.log_softmax(dim=1)).sum(1).mean()


def distill_loss(out: dict) -> torch.Tensor:
    """The distillation term of an output dict holding the student's features and scale and
    the TEACHER_KEYS: this rank's rows against the global batch, as the teacher ranks them."""
    images, texts, scale = out["image_features"], out["text_features"], out["logit_scale"]
    all_images, _ = gather_with_grad(images)
    all_texts, _ = gather_with_grad(texts)
    t_images, t_texts, t_scale = (out[key] for key in TEACHER_KEYS)
    all_t_images, _ = gather_with_grad(t_images)
    all_t_texts, _ = gather_with_grad(t_texts)
    per_image = soft_cross_entropy(t_scale * t_images @ all_t_texts.T, scale * images @ all_texts.T)
    per_text = soft_cross_entropy(t_scale * t_texts @ all_t_images.T, scale * texts @ all_images.T)
    return (per_image + per_text) / 2


LOSSES = ("clip", "siglip", "caption", "clip+caption", "siglip+caption")


def loss_parts(kind: str) -> tuple[str | None, bool]:
    """(contrastive loss or None, whether a caption loss is added) of a --loss value."""
    if kind not in LOSSES:
        raise ValueError(f"unknown loss {kind!r} (choose {', '.join(LOSSES)})")
    contrastive, _, caption = kind.partition("+")
    if contrastive == "caption":
        return None, True
    return contrastive, caption == "caption"


def contrastive_loss(
    kind: str, out: dict, siglip_exchange: str = "auto", distill_weight: float = 1.0
) -> torch.Tensor:
    """The contrastive term; plus distill_weight x `distill_loss` when `out` holds a teacher's
    features (TEACHER_KEYS)."""
    if kind == "clip":
        loss = clip_loss(out["image_features"], out["text_features"], out["logit_scale"])
    else:
        loss = siglip_loss(
            out["image_features"],
            out["text_features"],
            out["logit_scale"],
            out["logit_bias"],
            siglip_exchange,
        )
    if TEACHER_KEYS[0] in out:
        loss = loss + distill_weight * distill_loss(out)
    return loss


def compute_loss(
    kind: str,
    out: dict,
    caption_weight: float = 1.0,
    siglip_exchange: str = "auto",
    distill_weight: float = 1.0,
) -> torch.Tensor:
    """The --loss `kind` of a model's output dict: contrastive (with a teacher's term when the
    dict has its features), caption, or their sum with the caption term weighted."""
    contrastive, caption = loss_parts(kind)
    loss = (
        contrastive_loss(contrastive, out, siglip_exchange, distill_weight) if contrastive else 0.0
    )
    if caption:
        loss = loss + caption_weight * out["caption_loss"]
    return loss
