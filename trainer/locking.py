"""Locked towers (LiT), with open_clip's flags and grouping.

A locked parameter has `requires_grad` False, so it has no gradient buffer, no AdamW state
(`train.param_groups` skips it), no DDP bucket and no FSDP reduce-scatter. Groups are
open_clip's: `--lock-image-unlocked-groups N` leaves the last N groups of the vision tower
trainable (embeddings + first block, ..., last block + ln_post, proj), and
`--lock-text-unlocked-layers N` the last N of the text tower (embeddings, blocks, last block +
ln_final, projection). open_clip's own `lock_text_tower` refuses a trainable LayerNorm for its
built-in text tower; here `--lock-text-freeze-layer-norm` keeps every text LayerNorm frozen,
unlocked layers' included, and without it they follow their group.
"""

from __future__ import annotations

import torch
from open_clip.transformer import lock_text_tower

NOT_TEXT = ("visual.", "decoder.", "logit_")  # what is not the text tower, by parameter name


def lock_towers(model: torch.nn.Module, args) -> dict:
    """Apply --lock-image / --lock-text to `model` (an open_clip CLIP or a CaptionModel);
    returns {"locked": parameters frozen, "trainable": the rest} for the log."""
    if args.lock_image:
        model.visual.lock(
            unlocked_groups=args.lock_image_unlocked_groups,
            freeze_bn_stats=args.lock_image_freeze_bn_stats,
        )
    if args.lock_text:
        text = getattr(model, "text", None) if hasattr(model, "decoder") else model
        if text is None:
            raise ValueError("--lock-text: a caption-only model has no text tower")
        lock_text_tower(text, args.lock_text_unlocked_layers)
        if args.lock_text_freeze_layer_norm:
            for name, module in text.named_modules():
                if isinstance(module, torch.nn.LayerNorm) and not name.startswith(NOT_TEXT):
                    module.requires_grad_(False)
    params = list(model.parameters())
    locked = sum(p.numel() for p in params if not p.requires_grad)
    return {"locked": locked, "trainable": sum(p.numel() for p in params) - locked}
