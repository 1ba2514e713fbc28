"""Distillation from a frozen teacher: open_clip's `DistillClipLoss` over the global batch.

The student's loss gains weight x the cross-entropy of its logits against the teacher's softmax,
in both directions (image->text and text->image), each rank scoring its own rows against every
rank's columns, as `losses.clip_loss` does. The teacher runs in eval mode without gradient, in
bf16 on a GPU; it sees the student's augmented images resized (bicubic) to its own resolution
and its own tokens of the same texts, as MetaCLIP 2's `apps/multi_distill` does.

Differences from the release, on purpose:
- the teacher's temperature is its own learned scale (open_clip_train's choice);
  `--distill-logit-scale 200` gives the release's fixed sharpening;
- one student per run. The release's multi-distill trains several students on one teacher
  forward, each with its own optimizer; here a run has one model, optimizer, schedule,
  checkpoint and export, and several of them per run would touch all of those: run one
  student per job (the teacher forward is `teacher_share` of the step: bench_trainer.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from trainer.losses import TEACHER_KEYS


class TeacherTokens:
    """The worker's tokenizer when a frozen model has its own: the batch gets every token set,
    `tokens` for the student and e.g. `teacher_tokens`, `reference_tokens` for the others."""

    def __init__(self, student, **others):
        self.student, self.others = student, others

    def __call__(self, texts) -> dict:
        out = {"tokens": self.student(texts)}
        out.update({f"{name}_tokens": tok(texts) for name, tok in self.others.items()})
        return out


class Teacher:
    """A frozen CLIP and how to feed it; `features` returns the loss's teacher inputs."""

    def __init__(self, model, image_size: int, logit_scale: float | None, device):
        self.model = model.to(device).eval().requires_grad_(False)
        if device.type == "cuda":
            self.model.to(torch.bfloat16)
        self.image_size = image_size
        self.logit_scale = logit_scale

    @torch.no_grad()
    def features(self, images: torch.Tensor, tokens: torch.Tensor) -> dict:
        if images.shape[-1] != self.image_size:
            images = F.interpolate(images, size=self.image_size, mode="bicubic")
        dtype = next(self.model.parameters()).dtype
        image_features = self.model.encode_image(images.to(dtype), normalize=True).float()
        text_features = self.model.encode_text(tokens, normalize=True).float()
        scale = self.model.logit_scale.exp().float()
        if self.logit_scale is not None:
            scale = torch.full_like(scale, self.logit_scale)
        out = dict(zip(TEACHER_KEYS, (image_features, text_features, scale)))
        if getattr(self.model, "logit_bias", None) is not None:  # a SigLIP: ACID scores sigmoid
            out["teacher_logit_bias"] = self.model.logit_bias.float()
        return out


def build_frozen(
    name: str,
    weights: str,
    tokenizer_dir: str | None,
    image_size: int | None,
    logit_scale: float | None,
    student_model: str,
    device,
) -> tuple[Teacher, object | None]:
    """(Teacher, its tokenizer when it may differ from the student's, else None): a frozen
    open_clip CLIP `name` with `weights` (any --pretrained format), the distillation teacher or
    ACID's reference model."""
    from trainer import models, pretrained

    model = models.build_model(name, "clip", image_size)
    hint = f"a QuickGELU config as the model name, e.g. {name}-quickgelu where open_clip has one"
    pretrained.load_pretrained(model, weights, name, models.model_config(name), hint)
    tokenizer = None
    if tokenizer_dir or name != student_model:
        tokenizer = models.build_tokenizer(name, tokenizer_dir, model.context_length)
    return Teacher(model, models.image_size(model), logit_scale, device), tokenizer
