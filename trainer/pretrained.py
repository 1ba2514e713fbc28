"""Released weights into a run's model: the files open_clip users have, read locally.

`--pretrained PATH` takes
- open_clip_train's checkpoint (`{"epoch", "state_dict": {"module.*": ...}}`),
- a bare state dict (`open_clip_pytorch_model.bin`) or a `.safetensors` file,
- a hub-layout folder (`open_clip_config.json` + `open_clip_model.safetensors` or
  `open_clip_pytorch_model.bin`, what `huggingface-cli download` and `trainer.export` write):
  its `model_cfg` must describe the `--model` architecture;
`--pretrained-image PATH` the image tower alone, from any of those (the `visual.*` keys) or
from a state dict of the tower itself.

The checkpoint is massaged the way open_clip's `load_checkpoint` does (third-party key names,
scalar/1-d logit scale, position embeddings resized to `--image-size`), then loaded strictly:
the only parameters a checkpoint may lack are those it cannot have (a caption decoder, a
SigLIP bias when it is a CLIP checkpoint), and they keep their init. Anything else is a
`ValueError` naming the first missing and unexpected keys.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

HUB_CONFIG = "open_clip_config.json"
HUB_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
# parameters a released CLIP checkpoint cannot hold for our models: they keep their init
KEEP_INIT_PREFIXES = ("decoder.", "logit_bias", "text.logit_bias")


def weights_file(path: Path) -> tuple[Path, dict | None]:
    """(weights file, the folder's model_cfg or None) of a file or a hub-layout folder."""
    if not path.exists():
        raise ValueError(f"{path} does not exist")
    if not path.is_dir():
        return path, None
    config = path / HUB_CONFIG
    found = [path / name for name in HUB_WEIGHTS if (path / name).is_file()]
    if not config.is_file() or not found:
        raise ValueError(
            f"{path} is a folder without {HUB_CONFIG} and one of {', '.join(HUB_WEIGHTS)} "
            "(the layout of an open_clip hub folder)"
        )
    try:
        model_cfg = json.loads(config.read_text(encoding="utf-8"))["model_cfg"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{config}: not an open_clip config with a model_cfg ({exc})") from None
    return found[0], model_cfg


def read_state_dict(path: str | Path) -> tuple[dict, dict | None]:
    """(state dict, the hub folder's model_cfg or None), on the CPU, never unpickling code."""
    from open_clip.factory import load_state_dict

    file, model_cfg = weights_file(Path(path))
    try:
        state = load_state_dict(str(file), device="cpu", weights_only=True)
    except Exception as exc:  # torch and safetensors raise many kinds for a file they cannot read
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        raise ValueError(f"{file}: not a readable checkpoint ({reason})") from None
    if isinstance(state, dict) and "model" in state and "args" in state:
        raise ValueError(f"{file} is a checkpoint of trainer/train.py: use --init-from")
    if not isinstance(state, dict) or not state or not all(map(torch.is_tensor, state.values())):
        raise ValueError(f"{file}: no state dict of tensors in it")
    return state, model_cfg


# a tokenizer's location is not architecture; position embeddings are resized to image_size
IGNORED_CFG_KEYS = {"hf_tokenizer_name", "tokenizer_kwargs", "image_size"}


QUICK_GELU_HINT = "--force-quick-gelu turns it on"  # for --model; a teacher's names its config


def check_config(
    model_cfg: dict | None, expected: dict, path, model_name: str, quick_gelu_hint: str
) -> None:
    """A hub folder's architecture must be --model's: the first differing key in one line."""
    if model_cfg is None:
        return

    def differs(where: str, theirs, ours) -> ValueError:
        return ValueError(
            f"{path} holds another architecture than --model {model_name}: {where} is "
            f"{theirs!r} there, {ours!r} here"
        )

    if bool(model_cfg.get("quick_gelu")) != bool(expected.get("quick_gelu")):
        error = differs("quick_gelu", model_cfg.get("quick_gelu"), expected.get("quick_gelu"))
        raise ValueError(f"{error} ({quick_gelu_hint})")
    if model_cfg.get("embed_dim") != expected.get("embed_dim"):
        raise differs("embed_dim", model_cfg.get("embed_dim"), expected.get("embed_dim"))
    for tower in ("vision_cfg", "text_cfg"):
        theirs, ours = model_cfg.get(tower) or {}, expected.get(tower) or {}
        for key in sorted((set(theirs) | set(ours)) - IGNORED_CFG_KEYS):
            if theirs.get(key) != ours.get(key):
                raise differs(f"{tower}.{key}", theirs.get(key), ours.get(key))


def _scalar_shapes(state: dict, module) -> dict:
    """open_clip's fix for a logit scale/bias saved as a scalar where the model has a 1-d
    tensor (or the reverse)."""
    for key in ("logit_scale", "logit_bias"):
        target = getattr(module, key, None)
        if key in state and target is not None and state[key].ndim != target.ndim:
            state[key] = state[key].reshape(target.shape)
    return state


def _clip_conversions(state: dict, model) -> dict:
    """open_clip's `load_checkpoint` conversions for an open_clip CLIP: third-party key names,
    logit shapes, the HF text tower's position ids, both position embeddings resized."""
    from open_clip.factory import convert_state_dict, resize_pos_embed, resize_text_pos_embed

    state = _scalar_shapes(dict(convert_state_dict(model, state)), model)
    state.pop("text.transformer.embeddings.position_ids", None)
    resize_pos_embed(state, model)
    resize_text_pos_embed(state, model)
    return state


def for_caption_model(state: dict, model) -> dict:
    """A CLIP state dict under a CaptionModel's names: `visual.*` stays, the text tower and
    logit scale/bias go under `text.` (none without a text tower); the vision projection is
    dropped where the model pools nothing (`visual.proj` None: caption-only)."""
    out = {}
    for key, value in state.items():
        if key.startswith("visual."):
            if key == "visual.proj" and getattr(model.visual, "proj", None) is None:
                continue
            out[key] = value
        elif model.text is not None:
            out[f"text.{key}"] = value
    return out


def _first(keys, n: int = 3) -> str:
    keys = sorted(keys)
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def load_into(model, state: dict, what: str) -> dict:
    """Strict load but for KEEP_INIT_PREFIXES; returns counts for the log line. A tensor of
    another shape is one line naming the key and both shapes (torch's own error lists them all
    over several lines)."""
    own = model.state_dict()
    for key, value in state.items():
        if key in own and own[key].shape != value.shape:
            raise ValueError(
                f"{what} does not fit this model: {key} is {tuple(value.shape)} there, "
                f"{tuple(own[key].shape)} here"
            )
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(KEEP_INIT_PREFIXES)]
    if missing or result.unexpected_keys:
        parts = []
        if missing:
            parts.append(f"missing {_first(missing)}")
        if result.unexpected_keys:
            parts.append(f"unexpected {_first(result.unexpected_keys)}")
        raise ValueError(f"{what} does not fit this model: {'; '.join(parts)}")
    return {"loaded": len(state), "kept_init": len(result.missing_keys)}


def load_pretrained(
    model, path: str, model_name: str, expected_cfg: dict, quick_gelu_hint: str = QUICK_GELU_HINT
) -> str:
    """--pretrained PATH into `model` (all towers it has); returns the log line. open_clip's
    conversions that refuse a checkpoint (e.g. a text width that differs) are one line too."""
    state, model_cfg = read_state_dict(path)
    check_config(model_cfg, expected_cfg, path, model_name, quick_gelu_hint)
    try:
        state = _converted(state, model)
    except (AssertionError, RuntimeError) as exc:  # open_clip's resize_* assert on widths
        raise ValueError(f"--pretrained {path} does not fit this model: {exc}") from None
    counts = load_into(model, state, f"--pretrained {path}")
    return (
        f"pretrained weights from {path}: {counts['loaded']} tensors, "
        f"{counts['kept_init']} kept their init"
    )


def _converted(state: dict, model) -> dict:
    """A CLIP checkpoint under `model`'s names, conversions applied."""
    if hasattr(model, "decoder"):  # a CaptionModel: its vision tower and text part
        from open_clip.factory import resize_pos_embed, resize_text_pos_embed

        state = dict(state)
        resize_pos_embed(state, model)
        if model.text is not None:
            state = _scalar_shapes(state, model.text)
            resize_text_pos_embed(state, model.text)
        return for_caption_model(state, model)
    return _clip_conversions(state, model)


def load_pretrained_image(model, path: str) -> str:
    """--pretrained-image PATH into `model.visual`: the `visual.*` keys of a whole-model
    checkpoint, or a state dict of the tower itself; position embeddings resized."""
    from open_clip.factory import resize_pos_embed

    state, _ = read_state_dict(path)
    if any(k.startswith("visual.") for k in state):
        state = {k: v for k, v in state.items() if k.startswith("visual.")}
    else:
        state = {f"visual.{k}": v for k, v in state.items()}
    if getattr(model.visual, "proj", None) is None:  # caption-only; ResNets have attnpool
        state.pop("visual.proj", None)
    try:
        resize_pos_embed(state, model)
    except (AssertionError, RuntimeError) as exc:
        raise ValueError(f"--pretrained-image {path} does not fit this model: {exc}") from None
    tower = {k[len("visual.") :]: v for k, v in state.items()}
    counts = load_into(model.visual, tower, f"--pretrained-image {path}")
    return f"pretrained image tower from {path}: {counts['loaded']} tensors"
