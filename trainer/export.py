"""A trainer checkpoint as an open_clip `local-dir:` folder.

    python -m trainer.export runs/x/checkpoints/step_00010000.pt exported/x
    python -m trainer.export runs/x/checkpoints/step_00010000.dcp exported/x   # --fsdp runs

writes open_clip_config.json ({"model_cfg", "preprocess_cfg"}) and open_clip_model.safetensors,
which `open_clip.create_model_from_pretrained('local-dir:exported/x')`, `trainer.evaluate
--model-dir` and CLIP_benchmark (`--model local-dir:exported/x`) load. Exports the model weights
only (no optimizer or data state).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import open_clip  # noqa: E402

from trainer import models  # noqa: E402

WEIGHTS = "open_clip_model.safetensors"
CONFIG = "open_clip_config.json"


def export(checkpoint: str | Path, out_dir: str | Path) -> Path:
    from safetensors.torch import save_file

    model, _, args = models.load_checkpoint_model(checkpoint)
    if not isinstance(model, open_clip.CLIP):
        raise ValueError(
            f"{checkpoint} is a --loss {args.get('loss')} model, which open_clip cannot build "
            "from a config; evaluate it with python -m trainer.evaluate --checkpoint"
        )
    cfg = models.model_config(args["model"])
    # the architecture the run trained, which flags may have changed from the named config
    if args.get("image_size"):
        cfg["vision_cfg"] = dict(cfg["vision_cfg"], image_size=args["image_size"])
    if args.get("force_quick_gelu"):
        cfg["quick_gelu"] = True
    if args.get("tokenizer"):
        # open_clip builds an HFTokenizer from text_cfg.hf_tokenizer_name
        cfg.setdefault("text_cfg", {})["hf_tokenizer_name"] = str(Path(args["tokenizer"]).resolve())
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out_dir / WEIGHTS), metadata={"format": "pt"})
    config = {
        "model_cfg": cfg,
        "preprocess_cfg": dict(model.visual.preprocess_cfg),
        "trainer": {"checkpoint": _where(checkpoint), "model": args["model"]},
    }
    if args.get("naflex"):  # open_clip 3.3.0 builds the square tower; trainer.evaluate NaFlex
        config["trainer"]["naflex"] = {"max_patches": args["max_patches"]}
    (out_dir / CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return out_dir


def _where(checkpoint: str | Path) -> str:
    """The checkpoint's URI as given, or its absolute path."""
    text = str(checkpoint)
    return text if "://" in text else str(Path(text).resolve())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m trainer.export",
        description="Write a trainer checkpoint as an open_clip local-dir folder.",
    )
    p.add_argument(
        "checkpoint",
        help="a step_*.pt file or step_*.dcp folder written by trainer/train.py, local or at "
        "a URI (s3://..., as --remote-sync keeps them)",
    )
    p.add_argument("out_dir", help="folder for open_clip_config.json + weights")
    args = p.parse_args(argv)
    try:
        out = export(args.checkpoint, args.out_dir)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"exported {args.checkpoint} to {out} (load with 'local-dir:{out}')")
    return 0


if __name__ == "__main__":
    sys.exit(main())
