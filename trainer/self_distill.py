"""SigLIP 2's late-training self-distillation (`--self-distill-from`): SILC's local-to-global
consistency and TIPS's masked prediction, both against an EMA teacher of the vision tower.

No anchor publishes SigLIP 2's, SILC's or TIPS's training code (big_vision issues #161, #169,
#178). Both papers build on DINO/iBOT, so the parts here follow iBOT's release
(bytedance/ibot `main_ibot.py`, `models/head.py`), which has the two losses in one model:

- the teacher is a copy of the student's vision tower and head, made when the terms switch on
  (at FRACTION of the run), then updated after every optimizer step as
  teacher = decay x teacher + (1 - decay) x student (`--ema-decay`, iBOT's 0.996, kept
  constant: iBOT raises it to 1 on a cosine over the run, and SigLIP 2 states no schedule);
- the teacher sees the global view (the student's augmented training image, unmasked);
- the student sees the same view with `--mask-ratio` of its patch embeddings replaced by a
  learned mask token (exactly round(ratio x patches) per image, uniformly: TIPS/SigLIP 2 say
  50% and no shape; iBOT masks blocks), and `--local-crops` small crops;
- one head (iBOT's head, `shared_head`): a 3-layer MLP (2048 hidden, GELU) to a 256-d
  bottleneck, L2-normalised, then a weight-normalised linear map to `--self-distill-dim`
  prototypes (iBOT's 8192), on the tower's pooled output (before the CLIP projection) and on
  each patch token;
- SILC term: the cross-entropy of each local crop's student distribution (temperature 0.1)
  against the teacher's of the global view, centred and sharpened (0.04), averaged over crops
  and images (iBOT's cls term over v != q: with one global view, the local crops);
- TIPS term: the same at the masked positions only, the teacher's patch distribution at 0.07,
  averaged over the masked positions;
- both centres move as iBOT's: centre = 0.9 x centre + 0.1 x the teacher's batch mean over
  all ranks (the patch centre: of each image's mean over its patches), once per optimizer step.

Differences on purpose: the teacher temperatures have no warm-up (the terms start late in a
run, not at its first step); patch dropout is not applied in these forwards (the masked
positions must stay where the targets are); the local crops are resized bilinearly on the
device like the global view (iBOT: bicubic on the host, plus blur and solarisation).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

HEAD_HIDDEN, HEAD_BOTTLENECK = 2048, 256
STUDENT_TEMP, TEACHER_TEMP, TEACHER_PATCH_TEMP = 0.1, 0.04, 0.07
CENTER_MOMENTUM = 0.9
LOCAL_SCALE = (0.05, 0.4)  # DINO's and iBOT's local_crops_scale
LOCAL_FRACTION = 96 / 224  # their local crop size at 224 px


@dataclass(frozen=True)
class SelfDistillConfig:
    start_step: int
    ema_decay: float = 0.996
    local_crops: int = 8
    local_size: int = 96
    mask_ratio: float = 0.5
    silc_weight: float = 1.0
    tips_weight: float = 0.25
    prototypes: int = 8192


def default_local_size(image_size: int, patch_size: int) -> int:
    """96/224 of the image side (DINO's 96 px at 224), rounded to whole patches, >= 1 patch."""
    return max(1, round(image_size * LOCAL_FRACTION / patch_size)) * patch_size


def check_tower(visual) -> None:
    """A ValueError in one line unless `visual` is open_clip's VisionTransformer with patch
    tokens at its output (the masked prediction needs one output per patch)."""
    from open_clip.transformer import VisionTransformer

    if not isinstance(visual, VisionTransformer):
        raise ValueError(
            f"--self-distill-from needs an open_clip VisionTransformer image tower, not "
            f"{type(visual).__name__}"
        )
    if visual.attn_pool is not None or visual.pool_type == "none":
        raise ValueError(
            "--self-distill-from needs one output per patch: not an attention-pooled tower"
        )


def _position_embedding(visual, grid: tuple[int, int]) -> torch.Tensor:
    """The tower's position embeddings for a `grid` of patches: the learned grid resized
    bicubically when it differs (DINO's interpolate_pos_encoding), the class position as is."""
    pos = visual.positional_embedding
    if tuple(grid) == tuple(visual.grid_size):
        return pos
    gh, gw = visual.grid_size
    wide = torch.promote_types(pos.dtype, torch.float32)  # bf16 parameters: in fp32
    patches = pos[1:].reshape(1, gh, gw, -1).permute(0, 3, 1, 2).to(wide)
    patches = F.interpolate(patches, size=grid, mode="bicubic", align_corners=False)
    patches = patches.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1).to(pos.dtype)
    return torch.cat([pos[:1], patches])


def encode(visual, images: torch.Tensor, mask=None, mask_token=None):
    """(pooled B x W, patch tokens B x P x W) of open_clip's VisionTransformer before its
    projection, as its forward computes them (no patch dropout), with the patch embeddings at
    `mask` (B x P bool) replaced by `mask_token` and the position embeddings resized for
    images of another size."""
    x = visual.conv1(images)
    grid = x.shape[-2:]
    x = x.flatten(2).transpose(1, 2)  # B x P x W
    if mask is not None:
        x = torch.where(mask[..., None], mask_token.to(x.dtype), x)
    cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + _position_embedding(visual, grid).to(x.dtype)
    x = visual.transformer(visual.ln_pre(x))
    return visual._pool(x)


class Head(nn.Module):
    """iBOT's projection head (DINOHead with norm_last_layer): MLP, L2 norm, then a linear map
    whose rows are normalised (weight_norm with the gain fixed at 1)."""

    def __init__(self, width: int, prototypes: int):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(width, HEAD_HIDDEN),
            nn.GELU(),
            nn.Linear(HEAD_HIDDEN, HEAD_HIDDEN),
            nn.GELU(),
            nn.Linear(HEAD_HIDDEN, HEAD_BOTTLENECK),
        )
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):
                nn.init.trunc_normal_(layer.weight, std=0.02)
                nn.init.zeros_(layer.bias)
        self.prototypes = nn.Parameter(torch.empty(prototypes, HEAD_BOTTLENECK))
        nn.init.trunc_normal_(self.prototypes, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(self.mlp(x), dim=-1)
        return x @ F.normalize(self.prototypes, dim=-1).to(x.dtype).T


class Teacher(nn.Module):
    """The EMA copy of the student's tower and head; no parameter takes a gradient. Its own
    FSDP unit under --fsdp (`fsdp_unit`): it runs outside the model's forward."""

    fsdp_unit = True

    def __init__(self, visual, head: Head):
        super().__init__()
        self.visual = copy.deepcopy(visual)
        self.head = copy.deepcopy(head)
        self.requires_grad_(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled, patches = encode(self.visual, images)
        return self.head(pooled).float(), self.head(patches).float()


def draw_mask(batch: int, patches: int, ratio: float, seed) -> dict:
    """The masked positions of a micro-batch: exactly k = round(ratio x P) of each image's P
    patches (>= 1), uniformly without replacement, from a generator seeded with `seed` (run
    seed, step, rank, micro-batch: the same on a resumed run). Drawn on the host, as `mask`
    (B x P bool, for the embeddings) and `positions` (B x k, sorted, for gathering the
    outputs: a boolean index would make the device report its count back to the host)."""
    k = min(patches, max(1, round(ratio * patches)))
    state = np.random.SeedSequence([int(s) for s in seed]).generate_state(2)
    generator = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
    positions = torch.rand(batch, patches, generator=generator).argsort(dim=1)[:, :k]
    positions = positions.sort(dim=1).values
    mask = torch.zeros(batch, patches, dtype=torch.bool).scatter_(1, positions, True)
    return {"mask": mask, "positions": positions}


def _at(tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """B x k x D: each image's tokens at its `positions`."""
    return tokens.gather(1, positions[..., None].expand(-1, -1, tokens.shape[-1]))


def soft_cross_entropy(target: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Per row: -sum(target x log_softmax(logits / student temperature))."""
    return -(target * F.log_softmax(logits.float() / STUDENT_TEMP, dim=-1)).sum(dim=-1)


class SelfDistill(nn.Module):
    """The student's head and mask token, the teacher, and the teacher's centres. Attached to
    the model as `model.self_distill` so that optimizer, DDP/FSDP and both checkpoint kinds
    carry it; `evaluate` and `export` leave it out."""

    def __init__(self, visual, cfg: SelfDistillConfig):
        super().__init__()
        check_tower(visual)
        self.cfg = cfg
        width = visual.transformer.width
        self.patch_size = visual.patch_size[0]
        self.head = Head(width, cfg.prototypes)
        self.mask_token = nn.Parameter(torch.zeros(width))  # iBOT's init
        self.teacher = Teacher(visual, self.head)
        self.register_buffer("center", torch.zeros(cfg.prototypes))
        self.register_buffer("patch_center", torch.zeros(cfg.prototypes))
        self.register_buffer("started", torch.zeros((), dtype=torch.bool))
        # this step's teacher sums (cls, per-image patch mean, images) for the centre update,
        # and the log interval's term sums (silc, tips, micro-batches): not in checkpoints
        self.register_buffer("pending", torch.zeros(2, cfg.prototypes), persistent=False)
        self.register_buffer("pending_images", torch.zeros(()), persistent=False)
        self.register_buffer("logged", torch.zeros(3), persistent=False)

    def forward(self, visual, images, mask, positions, local=None):
        """The terms of one micro-batch: `images` the global view (B x 3 x S x S), `local` the
        local crops (crops x B in crop-major order), `mask` and `positions` from `draw_mask`.
        Returns the weighted sum (`self_distill_loss`) and each term."""
        cfg = self.cfg
        t_cls, t_patches = self.teacher(images)
        target = F.softmax((t_cls - self.center) / TEACHER_TEMP, dim=-1)
        patch_target = F.softmax(
            (_at(t_patches, positions) - self.patch_center) / TEACHER_PATCH_TEMP, dim=-1
        )
        with torch.no_grad():
            self.pending[0] += t_cls.sum(dim=0)
            self.pending[1] += t_patches.mean(dim=1).sum(dim=0)
            self.pending_images += len(images)
        zero = images.new_zeros((), dtype=torch.float32)
        silc = zero
        if local is not None:
            pooled = encode(visual, local)[0]
            per_crop = soft_cross_entropy(target.repeat(cfg.local_crops, 1), self.head(pooled))
            silc = per_crop.mean()
        _, patches = encode(visual, images, mask, self.mask_token)
        tips = soft_cross_entropy(patch_target, self.head(_at(patches, positions))).mean()
        with torch.no_grad():
            self.logged += torch.stack([silc.detach(), tips.detach(), torch.ones_like(silc)])
        return {
            "self_distill_loss": cfg.silc_weight * silc + cfg.tips_weight * tips,
            "silc_loss": silc,
            "tips_loss": tips,
        }

    def pairs(self, visual) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(teacher tensor, student tensor) for every teacher parameter, the local shards
        under FSDP (both are sharded alike, parameter by parameter)."""
        student = [*visual.parameters(), *self.head.parameters()]
        teacher = [*self.teacher.visual.parameters(), *self.teacher.head.parameters()]
        assert len(student) == len(teacher)
        local = [getattr(p, "_local_tensor", p) for p in (*teacher, *student)]
        pairs = list(zip(local[: len(teacher)], local[len(teacher) :], strict=True))
        if any(t.shape != s.shape for t, s in pairs):  # a gathered FSDP root: reshard first
            raise RuntimeError("teacher and student parameters are not sharded alike")
        return pairs

    @torch.no_grad()
    def start(self, visual) -> None:
        """The switch-on: the teacher becomes a copy of the student."""
        for t, s in self.pairs(visual):
            t.copy_(s)
        self.started.fill_(True)

    @torch.no_grad()
    def after_step(self, visual) -> None:
        """After an optimizer step: the EMA update and the centres (over all ranks)."""
        pairs = self.pairs(visual)
        teacher, student = [t for t, _ in pairs], [s.to(t.dtype) for t, s in pairs]
        torch._foreach_lerp_(teacher, student, 1.0 - self.cfg.ema_decay)
        sums = torch.cat([self.pending.flatten(), self.pending_images.view(1)])
        if torch.distributed.is_initialized():
            torch.distributed.all_reduce(sums)
        images = sums[-1].clamp(min=1)
        means = sums[:-1].view(2, -1) / images
        self.center.mul_(CENTER_MOMENTUM).add_(means[0], alpha=1 - CENTER_MOMENTUM)
        self.patch_center.mul_(CENTER_MOMENTUM).add_(means[1], alpha=1 - CENTER_MOMENTUM)
        self.pending.zero_()
        self.pending_images.zero_()

    def read_terms(self) -> tuple[float, float]:
        """The mean SILC and TIPS terms since the last read (0 before the switch-on)."""
        silc, tips, count = self.logged.tolist()
        self.logged.zero_()
        return (silc / count, tips / count) if count else (0.0, 0.0)


class Learner(nn.Module):
    """What DDP runs as its forward when self-distillation is on: the model's forward, then,
    when the micro-batch carries `self_distill` inputs, the terms, so that their gradients
    are reduced with the others. Its parameters are the model's (no state of its own)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images, tokens, self_distill: dict | None = None, **host):
        out = self.model(images, tokens, **host)
        if self_distill is not None:
            if hasattr(self.model, "unshard"):  # FSDP: the root's own parameters (patch
                self.model.unshard()  # embedding, class token...) gathered, if resharded
            out.update(self.model.self_distill(self.model.visual, images, **self_distill))
        return out


def without_self_distill(state: dict) -> dict:
    """A model state dict less the `self_distill.` entries (head, mask token, teacher): what
    evaluation and export load."""
    return {k: v for k, v in state.items() if not k.startswith("self_distill.")}
