"""Building the model and tokenizer of a run: one place for train, evaluate and export."""

from __future__ import annotations

import difflib
import json
import math
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # weights from local files only: never a hub

import open_clip  # noqa: E402
import torch  # noqa: E402

MODEL_CONFIGS = Path(__file__).resolve().parent / "model_configs"  # adds e.g. `tiny-clip`
# our configs' keys that open_clip's CLIP(**cfg) does not take: the caption decoder's size, notes
_EXTRA_KEYS = ("decoder_cfg", "_assumed", "_released")
_extras: dict[str, dict] = {}


def register_configs() -> None:
    """Add trainer/model_configs to open_clip's registry, keeping their decoder_cfg aside.
    Checked at every call: `open_clip.add_model_config` by anyone else rescans the folder and
    puts the keys that CLIP(**cfg) refuses back into the registry."""
    registry = open_clip.factory._MODEL_CONFIGS
    names = [path.stem for path in MODEL_CONFIGS.glob("*.json")]
    if any(name not in registry for name in names):
        open_clip.add_model_config(MODEL_CONFIGS)
    for name in names:
        cfg = registry.get(name, {})
        popped = {k: cfg.pop(k) for k in _EXTRA_KEYS if k in cfg}
        if popped or name not in _extras:
            _extras[name] = popped


def check_model_name(name: str, what: str = "model") -> None:
    """A ValueError in one line naming the closest known names when neither open_clip nor
    trainer/model_configs has a config called `name` (open_clip's own error is a traceback
    listing all of them). Names with a schema (hf-hub:, local-dir:) are left to open_clip."""
    register_configs()
    known = open_clip.list_models()
    if ":" in name or name in known:
        return
    by_lower = {k.lower(): k for k in known}
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=3, cutoff=0.6)
    hint = f"close names: {', '.join(by_lower[c] for c in close)}" if close else "no close name"
    raise ValueError(
        f"unknown {what} {name!r}; {hint} (all: open_clip.list_models() and trainer/model_configs/)"
    )


def model_config(name: str) -> dict:
    """open_clip's config of `name`, with its decoder_cfg when it has one."""
    register_configs()
    cfg = open_clip.get_model_config(name)
    if cfg is None:
        check_model_name(name)  # an unknown name: one line with the close ones
        raise ValueError(f"model {name!r} has no open_clip or trainer/model_configs/ config")
    return {**cfg, **_extras.get(name, {})}


def decoder_config(name: str, loss: str) -> dict:
    """The caption decoder's width/layers/heads: the config's decoder_cfg, else (only beside a
    text tower, SigLIP 2's choice) the text tower's width and heads with half its layers."""
    cfg = model_config(name)
    if "decoder_cfg" in cfg:
        return dict(cfg["decoder_cfg"])
    if loss == "caption":
        with_decoder = sorted(k for k, v in _extras.items() if "decoder_cfg" in v)
        raise ValueError(
            f"--loss caption needs a model config with a decoder_cfg; {name} has none "
            f"(configs with one: {', '.join(with_decoder)})"
        )
    text = cfg["text_cfg"]
    return {"width": text["width"], "layers": max(1, text["layers"] // 2), "heads": text["heads"]}


def default_caption_fusion(loss: str) -> str:
    """prefix for OpenVision 2's caption-only loss, cross (LocCa) beside a contrastive one."""
    return "prefix" if loss == "caption" else "cross"


def build_model(
    name: str,
    loss: str = "clip",
    image_size: int | None = None,
    visual_token_keep: float = 1.0,
    force_quick_gelu: bool = False,
    caption_fusion: str | None = None,
) -> torch.nn.Module:
    """Random init of model `name` for --loss `loss`: an open_clip CLIP (output_dict=True;
    SigLIP's scale and bias init for siglip losses), or a `trainer.caption.CaptionModel` for
    the caption losses. `image_size` overrides the config's (open_clip's force_image_size);
    `force_quick_gelu` uses QuickGELU whatever the config says (open_clip's flag: weights
    trained with it, e.g. MetaCLIP 2's ViT-H-14-quickgelu-worldwide). `caption_fusion` picks
    the caption decoder: prefix (OpenVision 2's, the default for --loss caption) or cross
    (LocCa's, the default beside a contrastive loss)."""
    from trainer.caption import CaptionDecoder, CaptionModel, PrefixCaptionDecoder
    from trainer.losses import loss_parts

    check_model_name(name)
    contrastive, caption = loss_parts(loss)
    clip = None
    if contrastive:
        extra = {"init_logit_scale": math.log(10), "init_logit_bias": -10.0}
        clip = open_clip.create_model(
            name,
            pretrained=None,
            pretrained_image=False,
            pretrained_text=False,
            output_dict=True,
            force_image_size=image_size,
            force_quick_gelu=force_quick_gelu,
            **(extra if contrastive == "siglip" else {}),
        )
        if not caption:
            return clip
    cfg = model_config(name)
    vision_cfg = dict(cfg["vision_cfg"], image_size=image_size or cfg["vision_cfg"]["image_size"])
    if clip is not None:
        visual = clip.visual
        del clip.visual  # the CaptionModel owns it; clip keeps the text tower and logit scale
    else:
        from dataclasses import asdict

        from open_clip.model import _build_vision_tower, set_model_preprocess_cfg
        from open_clip.transform import PreprocessCfg

        quick_gelu = force_quick_gelu or cfg.get("quick_gelu", False)
        visual = _build_vision_tower(
            cfg["embed_dim"], open_clip.model.CLIPVisionCfg(**vision_cfg), quick_gelu=quick_gelu
        )
        visual.proj = None  # no pooled embedding without a contrastive loss: no unused weights
        size = vision_cfg["image_size"]
        set_model_preprocess_cfg(visual, asdict(PreprocessCfg(size=(size, size))))
    text_cfg = cfg["text_cfg"]
    dec = decoder_config(name, loss)
    fusion = caption_fusion or default_caption_fusion(loss)
    decoder_class = {"prefix": PrefixCaptionDecoder, "cross": CaptionDecoder}[fusion]
    decoder = decoder_class(
        vocab_size=text_cfg.get("vocab_size", 49408),
        context_length=text_cfg.get("context_length", 77),
        width=dec["width"],
        layers=dec["layers"],
        heads=dec["heads"],
        vision_width=vision_cfg["width"],
        mlp_ratio=dec.get("mlp_ratio", 4.0),
    )
    return CaptionModel(visual, decoder, clip, visual_token_keep, text_cfg.get("pad_id", 0))


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
    """(model in eval mode on CPU, tokenizer, the run's args) from a trainer checkpoint: a
    step_N.pt file or a step_N.dcp folder (sharded; read here in one process), local or at a
    remote URI (`--remote-sync`'s store: copied to a temporary folder first)."""
    from trainer import checkpoint

    if "://" in str(path) and not str(path).startswith("file://"):  # s3://, gs://...: a copy
        import tempfile

        from trainer.remote_sync import download

        with tempfile.TemporaryDirectory(prefix="checkpoint-") as folder:
            return load_checkpoint_model(download(str(path), Path(folder)))
    path = Path(str(path).removeprefix("file://"))
    if path.is_dir():
        if not checkpoint.is_complete(path):
            raise ValueError(f"{path} is not a complete DCP checkpoint of trainer/train.py")
    ckpt = checkpoint.load(path)
    if not isinstance(ckpt, dict) or "args" not in ckpt or not (path.is_dir() or "model" in ckpt):
        raise ValueError(f"{path} is not a checkpoint of trainer/train.py")
    args = ckpt["args"]
    model = build_model(
        args["model"],
        args.get("loss", "clip"),
        args.get("image_size"),
        args.get("visual_token_keep") or 1.0,
        args.get("force_quick_gelu", False),
        # checkpoints from before the flag were all cross-attention decoders
        args.get("caption_fusion", "cross"),
    )
    if args.get("naflex"):
        from trainer.naflex import NaFlexVisionTransformer

        NaFlexVisionTransformer.enable(model.visual, args["max_patches"])
    if path.is_dir():
        checkpoint.load_sharded(path, model)  # reads the model's own keys only
    else:
        from trainer.self_distill import without_self_distill

        model.load_state_dict(without_self_distill(ckpt["model"]))
    tokenizer = build_tokenizer(args["model"], args.get("tokenizer"), model.context_length)
    return model.eval(), tokenizer, args


def load_model_dir(path: str | Path) -> tuple[torch.nn.Module, object]:
    """(model in eval mode, tokenizer) from an open_clip `local-dir:` folder."""
    if not (Path(path) / "open_clip_config.json").is_file():
        raise ValueError(f"{path}: no open_clip_config.json (not an open_clip local-dir folder)")
    spec = f"local-dir:{Path(path).resolve()}"
    model = open_clip.create_model(spec, output_dict=True)
    config = json.loads((Path(path) / "open_clip_config.json").read_text(encoding="utf-8"))
    flex = config.get("trainer", {}).get("naflex")
    if flex:  # exported from a --naflex run: its tower takes NaFlex batches again
        from trainer.naflex import NaFlexVisionTransformer

        NaFlexVisionTransformer.enable(model.visual, flex["max_patches"])
    return model.eval(), open_clip.get_tokenizer(spec)
