"""Building the model and tokenizer of a run: one place for train, evaluate and export."""

from __future__ import annotations

import math
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # random init: never reach for a model hub

import open_clip  # noqa: E402
import torch  # noqa: E402

MODEL_CONFIGS = Path(__file__).resolve().parent / "model_configs"  # adds e.g. `tiny-clip`
_registered = False


def register_configs() -> None:
    global _registered
    if not _registered:
        open_clip.add_model_config(MODEL_CONFIGS)
        _registered = True


def model_config(name: str) -> dict:
    register_configs()
    cfg = open_clip.get_model_config(name)
    if cfg is None:
        raise ValueError(f"unknown model {name!r}: not an open_clip config nor in {MODEL_CONFIGS}")
    return cfg


def build_model(name: str, loss: str = "clip") -> torch.nn.Module:
    """Random init of open_clip model `name` (output_dict=True); SigLIP's scale and bias init
    for `siglip`."""
    register_configs()
    extra = {"init_logit_scale": math.log(10), "init_logit_bias": -10.0}
    return open_clip.create_model(
        name,
        pretrained=None,
        pretrained_image=False,
        pretrained_text=False,
        output_dict=True,
        **(extra if loss == "siglip" else {}),
    )


def build_tokenizer(name: str, tokenizer_dir: str | None, context_length: int):
    """open_clip's tokenizer for `name`, or a local Hugging Face tokenizer folder."""
    register_configs()
    if tokenizer_dir:
        return open_clip.tokenizer.HFTokenizer(tokenizer_dir, context_length=context_length)
    return open_clip.get_tokenizer(name)


def image_size(model) -> int:
    size = model.visual.image_size
    return size[0] if isinstance(size, tuple) else size


def load_checkpoint_model(path: str | Path) -> tuple[torch.nn.Module, object, dict]:
    """(model in eval mode on CPU, tokenizer, the run's args) from a trainer checkpoint."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or "model" not in ckpt or "args" not in ckpt:
        raise ValueError(f"{path} is not a checkpoint of trainer/train.py")
    args = ckpt["args"]
    model = build_model(args["model"], args.get("loss", "clip"))
    model.load_state_dict(ckpt["model"])
    tokenizer = build_tokenizer(args["model"], args.get("tokenizer"), model.context_length)
    return model.eval(), tokenizer, args


def load_model_dir(path: str | Path) -> tuple[torch.nn.Module, object]:
    """(model in eval mode, tokenizer) from an open_clip `local-dir:` folder."""
    if not (Path(path) / "open_clip_config.json").is_file():
        raise ValueError(f"{path}: no open_clip_config.json (not an open_clip local-dir folder)")
    spec = f"local-dir:{Path(path).resolve()}"
    model = open_clip.create_model(spec, output_dict=True)
    return model.eval(), open_clip.get_tokenizer(spec)
