r"""Train an open_clip model on WebDataset shards.

    torchrun --nproc_per_node=8 trainer/train.py --train-data '/data/shards/{00000..00099}.tar' \
        --model ViT-B-32 --batch-size 256 --output-dir runs/b32
    python trainer/train.py ...          # one process (CPU or one GPU)

Nothing is fetched from a hub: random init, or --pretrained / --pretrained-image / --init-from
files on disk; tokenizers are open_clip's or a local folder (--tokenizer).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # weights from local files only: never a hub

if __package__ in (None, ""):  # `python trainer/train.py` / `torchrun trainer/train.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch.nn.parallel import DistributedDataParallel  # noqa: E402

from trainer import (  # noqa: E402
    accumulate,
    acid,
    augment,
    checkpoint,
    data,
    distill,
    distributed,
    evaluate,
    locking,
    models,
    naflex,
    pretrained,
    self_distill,
    sharding,
)
from trainer.losses import (  # noqa: E402
    LOSSES,
    SIGLIP_EXCHANGES,
    TEACHER_KEYS,
    compute_loss,
    loss_parts,
)
from trainer.remote_sync import RemoteSync  # noqa: E402


class NonFiniteError(ValueError):
    """The run stopped on non-finite steps; the newest checkpoint is the last good state."""


class UsageError(ValueError):
    """Flags that cannot work with this model or data (an unknown --model, a batch larger than
    the data): one line and exit 2, as argparse's own flag errors; other bad input exits 1."""


SELF_DISTILL_FLAGS = (
    "ema_decay", "local_crops", "local_crop_size", "local_crop_scale", "mask_ratio",
    "silc_weight", "tips_weight", "self_distill_dim",
)  # fmt: skip


def check_self_distill_flags(p: argparse.ArgumentParser, args) -> None:
    """The --self-distill-* family's combinations (argparse's one-line error otherwise)."""
    if args.self_distill_from is None:
        changed = [k for k in SELF_DISTILL_FLAGS if getattr(args, k) != p.get_default(k)]
        if changed:
            flags = ", ".join("--" + k.replace("_", "-") for k in changed)
            p.error(f"{flags}: self-distillation flags need --self-distill-from")
        return
    if not 0 <= args.self_distill_from < 1:
        p.error("--self-distill-from is a fraction of the run in [0, 1)")
    if not 0 <= args.ema_decay < 1:
        p.error("--ema-decay must be in [0, 1)")
    if not 0 < args.mask_ratio < 1:
        p.error("--mask-ratio must be in (0, 1)")
    if args.local_crops < 0 or (args.silc_weight > 0 and args.local_crops == 0):
        p.error("--local-crops must be >= 1 while --silc-weight > 0 (the SILC term needs them)")
    if args.self_distill_dim < 1:
        p.error("--self-distill-dim must be >= 1")
    if args.acid_ratio > 1:
        p.error("--self-distill-from and --acid-ratio: ACID's selection is not combined with it")
    if args.lock_image:
        p.error("--self-distill-from trains the image tower: not with --lock-image")


def check_naflex_flags(p: argparse.ArgumentParser, args, caption: bool) -> None:
    if not args.naflex:
        if args.max_patches != p.get_default("max_patches"):
            p.error("--max-patches is NaFlex's budget: it needs --naflex")
        return
    if args.max_patches < 1:
        p.error("--max-patches must be >= 1")
    refused = {
        "a caption loss (its decoder has no padding mask)": caption,
        "--fsdp (its blocks run outside their units' forward)": args.fsdp,
        "--grad-checkpointing": args.grad_checkpointing,
        "--distill-model (the teacher takes square images)": args.distill_model,
        "--acid-ratio": args.acid_ratio > 1,
        "--self-distill-from": args.self_distill_from is not None,
        "--compile (every new set of image grids would recompile)": args.compile,
    }
    for what, given in refused.items():
        if given:
            p.error(f"--naflex is not combined with {what}")


def self_distill_config(args, visual, total_steps: int):
    """The run's SelfDistillConfig, or None without --self-distill-from (ValueError: a local
    crop size that is not whole patches)."""
    if args.self_distill_from is None:
        return None
    patch, image = visual.patch_size[0], visual.image_size[0]
    size = args.local_crop_size or self_distill.default_local_size(image, patch)
    if size <= 0 or size % patch:
        raise UsageError(f"--local-crop-size {size} is not a multiple of the {patch} px patch")
    return self_distill.SelfDistillConfig(
        start_step=int(args.self_distill_from * total_steps),
        ema_decay=args.ema_decay,
        local_crops=args.local_crops,
        local_size=size,
        mask_ratio=args.mask_ratio,
        silc_weight=args.silc_weight,
        tips_weight=args.tips_weight,
        prototypes=args.self_distill_dim,
    )


def augmentation_from(args) -> augment.Augmentation:
    """The device-side training augmentation of the flags (validated: ValueError)."""
    return augment.Augmentation(
        scale=tuple(args.crop_scale),
        hflip=args.hflip,
        color_jitter=tuple(args.color_jitter) if args.color_jitter else None,
        color_jitter_prob=args.color_jitter_prob,
        grayscale=args.grayscale,
        local_crops=args.local_crops if args.self_distill_from is not None else 0,
        local_scale=tuple(args.local_crop_scale),
        native_aspect=args.naflex,
    )


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--train-data", required=True, help="shard spec, e.g. 'dir/{00000..00099}.tar'")
    g.add_argument(
        "--train-num-samples",
        type=int,
        help="samples per epoch (default: from sizes.json / manifest.json next to the shards)",
    )
    g.add_argument("--val-data", help="held-out shard(s) for the final retrieval recall@1/5")
    g.add_argument("--val-max-samples", type=int, default=1000, help="cap on held-out pairs")
    g.add_argument(
        "--workers",
        type=int,
        default=4,
        help="data loader processes per rank; each decodes JPEGs and hands over uint8 images "
        "(crop, resize and normalisation run on the device)",
    )
    g.add_argument(
        "--hflip", action="store_true", help="random horizontal flip (on the device, p = 0.5)"
    )
    g.add_argument(
        "--crop-scale",
        nargs=2,
        type=float,
        default=list(augment.CROP_SCALE),
        metavar=("MIN", "MAX"),
        help="RandomResizedCrop's area range (open_clip's aug-cfg scale); OpenVision 2 trains "
        "with 0.4 1.0",
    )
    g.add_argument(
        "--color-jitter",
        nargs=4,
        type=float,
        metavar=("B", "C", "S", "H"),
        help="torchvision ColorJitter(brightness, contrast, saturation, hue) on the device, "
        "applied to each image with probability --color-jitter-prob (open_clip's aug-cfg "
        "color_jitter; OpenVision 2: 0.32 0.32 0.32 0.08, SimCLR's jitter at strength 0.4)",
    )
    g.add_argument(
        "--color-jitter-prob",
        type=float,
        default=0.8,
        help="probability that an image is colour-jittered (open_clip's color_jitter_prob)",
    )
    g.add_argument(
        "--grayscale",
        type=float,
        default=0.0,
        metavar="P",
        help="probability that an image is turned grey (3 equal channels; open_clip's "
        "gray_scale_prob; OpenVision 2: 0.2)",
    )
    g.add_argument(
        "--gpu-decode",
        action="store_true",
        help="workers hand over JPEG bytes and the device decodes them in one batched "
        "torchvision.io.decode_jpeg call (nvJPEG on CUDA; the same code on CPU)",
    )
    g.add_argument(
        "--train-data-weights",
        metavar="W1::W2...",
        help="with several '::'-joined --train-data sources: each data stream draws every "
        "sample from source i with probability W_i / sum(W) (each source keeps its own shard "
        "order, passes and shuffle buffer; resumes bit-identically with the same ranks and "
        "--workers). Without it the sources' shards are pooled into one list",
    )
    g.add_argument("--shuffle-buffer", type=int, default=1000, help="samples in shuffle buffer")
    g.add_argument(
        "--resampled", action="store_true", help="draw shards with replacement (no epoch split)"
    )
    g = p.add_argument_group("online curation (MetaCLIP 2's training-time balancing)")
    g.add_argument(
        "--online-curation",
        metavar="RUN_DIR",
        help="balance pool shards (make shards POOL=matched) per epoch with this curation run's "
        "entry_counts/: each epoch picks one candidate text per image and keeps the image with "
        "its keep probability, seeded by (seed, epoch, uid); docs/online-curation.md",
    )
    balance = g.add_mutually_exclusive_group()
    balance.add_argument("--t-en", type=float, help="English threshold t (default: the run's)")
    balance.add_argument(
        "--tail-fraction", type=float, help="tail fraction p for every language (default: run's)"
    )
    g.add_argument("--curation-seed", type=int, help="balancing seed (default: the run's seed)")
    g.add_argument(
        "--online-fixed-epoch",
        action="store_true",
        help="every epoch draws with the run's own seed: one pass keeps exactly its curated/",
    )
    g = p.add_argument_group("data, continued")
    g.add_argument(
        "--record-samples",
        action="store_true",
        help="write the keys each rank trained on to OUTPUT_DIR/samples_rank{R}.txt",
    )
    g = p.add_argument_group("evaluation during training (points for a scaling-law fit)")
    g.add_argument(
        "--eval",
        action="append",
        default=[],
        metavar="DIR[:TASK]",
        help="a dataset in CLIP_benchmark's WebDataset layout (python -m trainer.datasets "
        "writes the digits, XM3600, Babel-ImageNet and CVQA); TASK: zeroshot_classification, "
        "retrieval or multiple_choice (default: its dataset_type.txt), or linear_probe (a "
        "classification set with a train/ split: a logistic-regression probe on frozen image "
        "features); repeatable. Evaluated on all ranks' shares at --eval-every and at the end; "
        "results go to metrics.jsonl and TensorBoard as eval/NAME/METRIC and "
        "eval/NAME/LANGUAGE/METRIC (NAME: the folder's name, NAME_linear_probe for a probe) "
        "with samples_seen and train_flops",
    )
    g.add_argument(
        "--eval-every", type=int, default=0, help="evaluate every N steps (0: at the end only)"
    )
    g.add_argument(
        "--eval-languages", help="comma list of languages to evaluate (default: all the set has)"
    )
    g.add_argument("--eval-max-samples", type=int, help="cap on samples per eval set")
    g.add_argument(
        "--eval-batch-size", type=int, default=256, help="images or texts per forward in --eval"
    )
    g = p.add_argument_group("model")
    g.add_argument(
        "--model",
        default="ViT-B-32",
        help="any open_clip model name (random init unless --pretrained)",
    )
    g.add_argument(
        "--tokenizer",
        help="local Hugging Face tokenizer directory (e.g. XLM-V for multilingual runs; needs "
        "`transformers`); default: the model's open_clip tokenizer",
    )
    g.add_argument(
        "--loss",
        choices=LOSSES,
        default="clip",
        help="clip: InfoNCE (softmax); siglip: pairwise sigmoid with learnable bias; caption: "
        "OpenVision 2, a vision tower + caption decoder trained on the caption loss alone (no "
        "text tower; needs a model config with a decoder_cfg, e.g. tiny-caption, "
        "openvision2-ViT-B-16); siglip+caption: SigLIP 2, sigmoid loss + a caption decoder on the "
        "un-pooled visual tokens; clip+caption: the same with InfoNCE (CoCa-like)",
    )
    p.add_argument(
        "--siglip-exchange",
        choices=SIGLIP_EXCHANGES,
        default="auto",
        help="how the sigmoid loss sees the other ranks' texts: bidir/shift pass them between "
        "neighbours world-1 times (the SigLIP paper's chunked form, open_clip's SigLipLoss; "
        "never holds the global batch's texts), gather all-gathers them; auto: bidir when "
        "distributed. Same loss and gradients either way",
    )
    g.add_argument(
        "--visual-token-keep",
        type=float,
        help="caption losses: the fraction of visual tokens each sample's decoder sees in "
        "training, a random subset (prefix fusion: int(R x N) in random order, as OpenVision "
        "2's release; cross: round(R x N) in original order; default 0.35 for caption, as "
        "released, 1.0 = all for the +caption losses); evaluation always sees all",
    )
    g.add_argument(
        "--caption-fusion",
        choices=["prefix", "cross"],
        help="caption decoder: prefix = OpenVision 2's (the kept visual tokens in front of the "
        "text in one causal decoder; default for --loss caption), cross = LocCa's (text "
        "self-attention + cross-attention to the visual tokens; default for siglip+caption "
        "and clip+caption)",
    )
    g.add_argument(
        "--caption-loss-weight",
        type=float,
        default=1.0,
        help="weight of the caption term in siglip+caption / clip+caption",
    )
    g.add_argument(
        "--image-size",
        type=int,
        help="input resolution, overriding the model config (open_clip's force_image_size)",
    )
    g.add_argument(
        "--init-from",
        help="start from this checkpoint's weights only (no optimizer, schedule or data "
        "position), position embeddings resized to --image-size: stage 2 of a low-then-high "
        "resolution run; a preempted stage restarts with --resume alone",
    )
    g = p.add_argument_group("released weights and locked towers (open_clip's flags)")
    g.add_argument(
        "--pretrained",
        metavar="PATH",
        help="start from released open_clip weights, read locally (never from a hub): "
        "open_clip_train's checkpoint (state_dict with module. keys), a bare state dict "
        "(open_clip_pytorch_model.bin), a .safetensors file, or a hub-layout folder "
        "(open_clip_config.json + weights; its architecture must be --model's). Position "
        "embeddings are resized to --image-size; a caption decoder or SigLIP bias the file "
        "lacks keeps its init; any other mismatch is an error naming the keys. With --eval, "
        "the run evaluates at step 0 (the starting point)",
    )
    g.add_argument(
        "--pretrained-image",
        metavar="PATH",
        help="the image tower alone from such a file (its visual.* keys) or from a state dict "
        "of the tower itself; the rest keeps its init (LiT: with --lock-image)",
    )
    g.add_argument(
        "--force-quick-gelu",
        action="store_true",
        help="QuickGELU activations whatever the config says (weights trained with it, e.g. "
        "MetaCLIP 2's ViT-H-14-quickgelu-worldwide: --model ViT-H-14-worldwide "
        "--force-quick-gelu, or the config ViT-H-14-worldwide-quickgelu)",
    )
    g.add_argument(
        "--lock-image",
        action="store_true",
        help="freeze the image tower (LiT): no gradients, optimizer state or gradient traffic",
    )
    g.add_argument(
        "--lock-image-unlocked-groups",
        type=int,
        default=0,
        help="leave the last N groups of the locked image tower trainable",
    )
    g.add_argument(
        "--lock-image-freeze-bn-stats",
        action="store_true",
        help="also freeze batch-norm running statistics of a locked image tower (ResNets)",
    )
    g.add_argument("--lock-text", action="store_true", help="freeze the text tower")
    g.add_argument(
        "--lock-text-unlocked-layers",
        type=int,
        default=0,
        help="leave the last N layer groups of the locked text tower trainable",
    )
    g.add_argument(
        "--lock-text-freeze-layer-norm",
        action="store_true",
        help="keep every text LayerNorm frozen, those of unlocked layers included",
    )
    g = p.add_argument_group("distillation (open_clip's DistillClipLoss)")
    g.add_argument(
        "--distill-model",
        help="a frozen teacher (any open_clip model name) whose softmax over the global batch "
        "the student also learns (cross-entropy, image->text and text->image), added to its own "
        "loss; needs --distill-pretrained",
    )
    g.add_argument(
        "--distill-pretrained", metavar="PATH", help="the teacher's weights (as --pretrained)"
    )
    g.add_argument(
        "--distill-tokenizer",
        help="the teacher's local Hugging Face tokenizer folder (default: its open_clip one)",
    )
    g.add_argument(
        "--distill-image-size",
        type=int,
        help="the teacher's resolution: it sees the student's augmented images resized "
        "(bicubic) to it (default: its config's)",
    )
    g.add_argument(
        "--distill-loss-weight", type=float, default=1.0, help="weight of the distillation term"
    )
    g.add_argument(
        "--distill-logit-scale",
        type=float,
        help="the teacher's softmax scale (default: its learned one; MetaCLIP 2's release: 200)",
    )
    g = p.add_argument_group("active data curation (ACID, SigLIP 2's B/16 and B/32)")
    g.add_argument(
        "--acid-ratio",
        type=float,
        default=1.0,
        help="draw F x --batch-size samples per rank and micro-batch, train on the --batch-size "
        "of them with the highest learnability (learner loss - reference loss within the drawn "
        "set; per-sample top-k: trainer/acid.py says why not the joint selection); an epoch "
        "counts drawn samples. Reference: --reference-model, else the --distill-model teacher. "
        "1: off",
    )
    g.add_argument("--reference-model", help="ACID's frozen reference (an open_clip model name)")
    g.add_argument("--reference-pretrained", metavar="PATH", help="its weights (as --pretrained)")
    g.add_argument(
        "--reference-tokenizer",
        help="its local Hugging Face tokenizer folder (default: open_clip's)",
    )
    g = p.add_argument_group(
        "self-distillation (SigLIP 2's last 20%: SILC + TIPS with iBOT's heads; self_distill.py)"
    )
    g.add_argument(
        "--self-distill-from",
        type=float,
        metavar="FRACTION",
        help="from this fraction of the run on (SigLIP 2: 0.8), add SILC's local-to-global "
        "consistency and TIPS's masked prediction against an EMA teacher of the image tower, "
        "a copy of it made at that step (default: off)",
    )
    g.add_argument(
        "--ema-decay",
        type=float,
        default=0.996,
        help="teacher = decay x teacher + (1 - decay) x student after every optimizer step "
        "(iBOT's base value, constant here)",
    )
    g.add_argument(
        "--local-crops",
        type=int,
        default=8,
        help="local crops per image the student sees for the SILC term (SigLIP 2: 8)",
    )
    g.add_argument(
        "--local-crop-size",
        type=int,
        help="their side in pixels, a multiple of the patch size (default: 96/224 of the image "
        "size in whole patches, DINO's 96 px at 224)",
    )
    g.add_argument(
        "--local-crop-scale",
        type=float,
        nargs=2,
        metavar=("MIN", "MAX"),
        default=[0.05, 0.4],
        help="their area range as a fraction of the image (DINO's and iBOT's)",
    )
    g.add_argument(
        "--mask-ratio",
        type=float,
        default=0.5,
        help="fraction of the student's patch embeddings replaced by a learned mask token for "
        "the TIPS term (exactly this share per image; SigLIP 2: 0.5)",
    )
    g.add_argument(
        "--silc-weight", type=float, default=1.0, help="weight of the SILC term (SigLIP 2: 1)"
    )
    g.add_argument(
        "--tips-weight",
        type=float,
        default=0.25,
        help="weight of the TIPS term (SigLIP 2: 0.25, re-weighted by model size in a way the "
        "paper does not state: set it here)",
    )
    g.add_argument(
        "--self-distill-dim",
        type=int,
        default=8192,
        help="prototypes of the shared projection head (iBOT's out_dim)",
    )
    g = p.add_argument_group("NaFlex (SigLIP 2's native aspect ratio; trainer/naflex.py)")
    g.add_argument(
        "--naflex",
        "--use-naflex",
        action="store_true",
        help="each image at its own aspect ratio, resized to as many patches as fit "
        "--max-patches (a training crop has the image's aspect ratio times a draw in "
        "[3/4, 4/3]; evaluation resizes the whole image), padding masked in attention and "
        "pooling; open_clip ViT towers with the clip or siglip loss (open_clip's --use-naflex)",
    )
    g.add_argument(
        "--max-patches",
        type=int,
        default=256,
        help="NaFlex's patch budget per image, also its sequence length (SigLIP 2: 256)",
    )
    g = p.add_argument_group("model, continued")
    g.add_argument(
        "--grad-checkpointing", action="store_true", help="recompute activations in backward"
    )
    g.add_argument(
        "--fsdp",
        action="store_true",
        help="shard parameters, gradients and optimizer state over the ranks (PyTorch FSDP2, "
        "one fully_shard unit per transformer block and token embedding; bf16 parameters with "
        "fp32 gradient reduction under --precision bf16), for models that do not fit one GPU "
        "under DDP; "
        "checkpoints become sharded DCP folders",
    )
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument(
        "--compile-backend",
        default="inductor",
        help="torch.compile backend (inductor; aot_eager traces without generating kernels)",
    )
    g = p.add_argument_group("optimisation")
    g.add_argument("--batch-size", type=int, default=256, help="per rank and micro-step")
    g.add_argument(
        "--accum-steps",
        type=int,
        default=1,
        help="micro-batches per optimizer step; the loss sees all of them (features of every "
        "micro-batch are cached, then each is recomputed with gradient): the contrastive batch "
        "is batch-size x world x accum-steps",
    )
    g.add_argument("--epochs", type=float, default=1.0, help="epochs (ignored with --steps)")
    g.add_argument("--steps", type=int, help="optimizer steps (default: from --epochs)")
    g.add_argument("--lr", type=float, default=5e-4, help="peak learning rate")
    g.add_argument(
        "--lr-scheduler",
        choices=["cosine", "const", "const-cooldown"],
        default="cosine",
        help="after the linear warmup: cosine to --min-lr; const; or const-cooldown, constant "
        "then a decay over the last --cooldown-steps to --lr-cooldown-end (open_clip's). One "
        "const run gives several scaling-law points: resume its checkpoints into a new "
        "--output-dir with const-cooldown, --steps S+C and --cooldown-steps C",
    )
    g.add_argument("--min-lr", type=float, default=0.0, help="cosine floor")
    g.add_argument("--warmup", type=int, default=2000, help="linear warmup steps")
    g.add_argument(
        "--cooldown-steps", type=int, default=0, help="const-cooldown: steps of the final decay"
    )
    g.add_argument(
        "--lr-cooldown-power",
        type=float,
        default=1.0,
        help="const-cooldown: decay (1 - progress)^power (1: linear)",
    )
    g.add_argument(
        "--lr-cooldown-end", type=float, default=0.0, help="const-cooldown: the final lr"
    )
    g.add_argument("--beta1", type=float, default=0.9, help="AdamW beta1")
    g.add_argument("--beta2", type=float, default=0.95, help="AdamW beta2 (MetaCLIP 2: 0.95)")
    g.add_argument("--eps", type=float, default=1e-6, help="AdamW epsilon")
    g.add_argument("--wd", type=float, default=0.1, help="weight decay (not on norms/biases/scale)")
    g.add_argument(
        "--grad-clip",
        type=float,
        default=1.0,
        help="max grad norm, 0 = off (MetaCLIP 2's release: off)",
    )
    g.add_argument(
        "--max-nonfinite",
        type=int,
        default=5,
        help="a step whose loss or gradient norm is not finite is skipped (no update) and "
        "counted; this many in a row stop the run with an error and no new checkpoint (checked "
        "at every log line and checkpoint; 0: never stop)",
    )
    g.add_argument(
        "--precision",
        choices=["fp32", "bf16", "fp16"],
        default="bf16",
        help="bf16/fp16: autocast (fp16 with a grad scaler); fp32 weights either way",
    )
    g.add_argument("--seed", type=int, default=0, help="model init, shard order, shuffling")
    g.add_argument("--device", default="auto", help="auto, cpu or cuda")
    g = p.add_argument_group("checkpoints and logging")
    g.add_argument("--output-dir", default="runs/clip", help="checkpoints, metrics, tensorboard")
    g.add_argument("--save-every", type=int, default=1000, help="checkpoint every N steps")
    g.add_argument("--keep-checkpoints", type=int, default=3, help="0 keeps all")
    g.add_argument(
        "--remote-sync",
        metavar="URI",
        help="also keep the checkpoints at this URI (s3://, gs://, abfs://, hdfs:// or a "
        "folder; credentials from the store's standard chain): each is uploaded in the "
        "background once written, the same number kept; `--resume latest` fetches the newest "
        "from there when this machine has none as new; metrics.jsonl and summary.json follow "
        "at the end (open_clip's flag; here per checkpoint, not every N seconds)",
    )
    g.add_argument(
        "--checkpoint-format",
        choices=["auto", "pt", "dcp"],
        default="auto",
        help="pt: one step_N.pt written by rank 0; dcp: a step_N.dcp folder of "
        "torch.distributed.checkpoint shards written by every rank, resumable at any world "
        "size; auto: dcp with --fsdp, else pt",
    )
    g.add_argument(
        "--sync-checkpoint",
        action="store_true",
        help="write dcp checkpoints before training goes on (default: in a background thread "
        "after staging to host memory; a checkpoint appears only once complete)",
    )
    g.add_argument(
        "--resume",
        help="'latest' (newest in OUTPUT_DIR/checkpoints) or a path; the data position is "
        "restored by seeking (cost independent of samples seen); with another world size or "
        "--workers the rest of the pass is redistributed (elastic; the log says what is skipped)",
    )
    g.add_argument("--log-every", type=int, default=10, help="progress line every N steps")
    g.add_argument("--exit-after", type=int, help="stop after this step (as a preempted job would)")
    args = p.parse_args(argv)
    contrastive, caption = loss_parts(args.loss)
    if not caption and args.visual_token_keep is not None:
        p.error(f"--visual-token-keep needs a caption loss, not --loss {args.loss}")
    if args.visual_token_keep is None:
        args.visual_token_keep = 0.35 if args.loss == "caption" else 1.0
    if not 0 < args.visual_token_keep <= 1:
        p.error("--visual-token-keep must be in (0, 1]")
    if args.caption_fusion and not caption:
        p.error(f"--caption-fusion picks a caption decoder: not for --loss {args.loss}")
    if caption and args.caption_fusion is None:
        args.caption_fusion = models.default_caption_fusion(args.loss)
    if (not caption or not contrastive) and args.caption_loss_weight != 1.0:
        p.error("--caption-loss-weight weighs the caption term of siglip+caption / clip+caption")
    if args.init_from and args.resume:
        p.error("--init-from starts a stage from weights; restart a preempted stage with --resume")
    if args.init_from and (args.pretrained or args.pretrained_image):
        p.error("--init-from and --pretrained/--pretrained-image: start from one of them")
    if args.lock_image_unlocked_groups and not args.lock_image:
        p.error("--lock-image-unlocked-groups needs --lock-image")
    if (args.lock_text_unlocked_layers or args.lock_text_freeze_layer_norm) and not args.lock_text:
        p.error("--lock-text-unlocked-layers / --lock-text-freeze-layer-norm need --lock-text")
    if args.lr_scheduler == "const-cooldown" and args.cooldown_steps <= 0:
        p.error("--lr-scheduler const-cooldown needs --cooldown-steps > 0")
    if args.cooldown_steps and args.lr_scheduler != "const-cooldown":
        p.error("--cooldown-steps is the decay of --lr-scheduler const-cooldown")
    if bool(args.distill_model) != bool(args.distill_pretrained):
        p.error("--distill-model and --distill-pretrained go together (a teacher and its weights)")
    distill_flags = (args.distill_tokenizer, args.distill_image_size, args.distill_logit_scale)
    if not args.distill_model and (any(distill_flags) or args.distill_loss_weight != 1.0):
        p.error("the --distill-* flags need --distill-model and --distill-pretrained")
    if args.distill_model and not contrastive:
        p.error("--distill-model distils a contrastive loss: not --loss caption")
    if bool(args.reference_model) != bool(args.reference_pretrained):
        p.error("--reference-model and --reference-pretrained go together")
    if args.reference_tokenizer and not args.reference_model:
        p.error("--reference-tokenizer needs --reference-model")
    if args.acid_ratio < 1:
        p.error("--acid-ratio is >= 1 (the drawn set's size over the trained batch's)")
    if args.acid_ratio > 1:
        if not (args.reference_model or args.distill_model):
            p.error("--acid-ratio needs a reference: --reference-model or --distill-model")
        if caption or not contrastive:
            p.error(
                f"--acid-ratio scores contrastive losses (clip, siglip), not --loss {args.loss}: "
                "a caption model's per-step plan is made on the host before selection"
            )
    elif args.reference_model:
        p.error("--reference-model is ACID's reference: it needs --acid-ratio > 1")
    check_self_distill_flags(p, args)
    check_naflex_flags(p, args, caption)
    try:
        augmentation_from(args)  # checked here; args stay plain values (they go into checkpoints)
    except ValueError as error:
        p.error(str(error))
    if args.eval_every < 0:
        p.error("--eval-every must be >= 0")
    if args.eval_every and not args.eval:
        p.error("--eval-every needs at least one --eval DIR")
    return args


def eval_sets(args) -> list[tuple[str, evaluate.Evaluator]]:
    """(name, Evaluator) per --eval DIR[:TASK]; names are the folders' names, made unique."""
    languages = args.eval_languages.split(",") if args.eval_languages else None
    out, names = [], set()
    for spec in args.eval:
        root, task = spec, None
        head, sep, tail = spec.rpartition(":")
        if sep and tail in evaluate.TASKS:
            root, task = head, tail
        bench = evaluate.open_benchmark(root, task)
        base = bench.name if task != "linear_probe" else f"{bench.name}_linear_probe"
        name, n = base, 2
        while name in names:
            name, n = f"{base}{n}", n + 1
        names.add(name)
        out.append(
            (
                name,
                evaluate.Evaluator(bench, languages, args.eval_batch_size, args.eval_max_samples),
            )
        )
    return out


def host_inputs(batch: dict, model) -> dict:
    """What the host computes for a step from the batch while it is on the CPU, passed to the
    model as keyword arguments: a caption model's `caption_plan` (on the device, it would cost
    host syncs in every step); nothing for the others."""
    return model.caption_plan(batch["tokens"]) if hasattr(model, "caption_plan") else {}


def micro_batch(
    batch: dict, transform, host: dict, device: torch.device, local_size: int | None = None
) -> tuple:
    """A loader batch on the device, for `accumulate.forward_backward`: images through the
    device transform, tokens and the host's tensors copied without waiting. With
    `local_size`, the host's `self_distill` inputs gain the batch's local crops at that size."""
    tokens = batch["tokens"].to(device, non_blocking=True)
    on_device = augment.to_device(host, device)
    images, local = transform.views(batch, local_size)
    if local is not None:
        on_device["self_distill"]["local"] = local
    return images, tokens, on_device


def optimizer_step(
    model, optimizer, scaler, grad_clip: float, replicated=(), loss=None
) -> torch.Tensor:
    """After a step's backward passes: the replicated parameters' gradients averaged (FSDP),
    the gradient norm clipped, the (scaled) optimizer step, unless the step's loss or gradient
    norm is not finite. Returns that verdict as a float tensor on the device (1.0: skipped),
    the same on every rank. No host sync but fp16's scaler: a fused AdamW (train.py's on GPU)
    reads the verdict on the device (its `found_inf`, which GradScaler uses the same way) and
    leaves parameters, moments and step count as they were; a foreach one (CPU) is skipped
    after a host check."""
    if replicated:
        sharding.sync_replicated_grads(replicated)
    scaler.unscale_(optimizer)  # a no-op unless fp16
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if grad_clip > 0:
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    else:
        norm = torch.nn.utils.get_total_norm(grads)
    if hasattr(norm, "full_tensor"):  # FSDP: a DTensor over the ranks' shards
        norm = norm.full_tensor()
    # fp16: an overflowing gradient is the scaler's routine (it skips and lowers its scale);
    # only a non-finite loss counts then
    bad = torch.zeros((), dtype=torch.bool, device=norm.device)
    if not scaler.is_enabled():
        bad = torch.isfinite(norm).logical_not()
    if loss is not None:
        bad = bad | torch.isfinite(loss).logical_not()
    skipped = bad.float()
    if torch.distributed.is_initialized():  # one rank's bad loss skips the step everywhere
        torch.distributed.all_reduce(skipped, op=torch.distributed.ReduceOp.MAX)
    if scaler.is_enabled():
        scaler.step(optimizer)  # its own found_inf covers non-finite gradients
    elif optimizer.defaults.get("fused"):
        optimizer.found_inf = skipped
        try:
            optimizer.step()
        finally:
            del optimizer.found_inf
    elif not skipped.item():  # the foreach AdamW (CPU): a host check costs nothing there
        optimizer.step()
    scaler.update()
    return skipped


class NonFiniteSteps:
    """Skipped steps, counted on the device (no sync per step): the run's total (carried over a
    resume), the current run of consecutive ones, and the longest run since the last check,
    which `check` compares with --max-nonfinite (so a burst between two checks is seen)."""

    def __init__(self, device: torch.device, total: int = 0):
        self.counts = torch.tensor([total, 0, 0], dtype=torch.float32, device=device)
        self.total = total

    def add(self, skipped: torch.Tensor) -> None:
        self.counts[0] += skipped
        self.counts[1] = (self.counts[1] + 1) * skipped
        self.counts[2] = torch.maximum(self.counts[2], self.counts[1])

    def check(self, step: int, limit: int) -> None:
        total, _, longest = (int(x) for x in self.counts.tolist())
        self.total = total
        self.counts[2] = self.counts[1]  # the next check looks at runs from here on
        if limit and longest >= limit:
            raise NonFiniteError(
                f"step {step}: {longest} steps in a row had a non-finite loss or gradient norm "
                f"(--max-nonfinite {limit}); stopped without writing a checkpoint (the newest "
                "one holds the last finite state)"
            )


def check_finite_weights(model, step: int) -> None:
    """Before a checkpoint is written: every parameter finite on every rank, or an error
    (a checkpoint with a NaN in it would be resumed from)."""
    flags = [torch.isfinite(getattr(p, "_local_tensor", p)).all() for p in model.parameters()]
    finite = torch.stack(flags).all().float()
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
    if not finite.item():
        raise NonFiniteError(f"step {step}: a weight is not finite; no checkpoint written")


def flops_per_sample(model, loss: str, images, tokens) -> int:
    """Training FLOPs of one sample (forward, loss and backward of the first two samples of a
    real batch, halved; caption decoders run on its trimmed caption length), counted by
    torch.utils.flop_counter: the x axis of a compute scaling plot."""
    from torch.utils.flop_counter import FlopCounterMode

    devices = [images.device] if images.device.type == "cuda" else []
    first = images.rows(2) if isinstance(images, naflex.NaFlexBatch) else images[:2]
    with torch.random.fork_rng(devices=devices):
        with FlopCounterMode(display=False) as counter:
            compute_loss(loss, model(first, tokens[:2])).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() // 2


def init_from(model, path: str, verbose: bool) -> None:
    """Weights of checkpoint `path` into `model`, the vision position embeddings resized
    (open_clip's resize_pos_embed) when the resolution changed; parameters the checkpoint lacks
    (another loss's heads) keep their init, and the log says which."""
    from open_clip.model import resize_pos_embed

    if Path(path).is_dir():  # a sharded DCP folder: read whole into its own model first
        state = models.load_checkpoint_model(path)[0].state_dict()
    else:
        state = checkpoint.load(Path(path))["model"]
    before = state.get("visual.positional_embedding")
    resize_pos_embed(state, model)
    result = model.load_state_dict(state, strict=False)
    loaded = len(state) - len(result.unexpected_keys)
    if loaded == 0:
        raise ValueError(f"--init-from {path}: no parameter of {path} fits this model")
    if verbose:
        after = state.get("visual.positional_embedding")
        resized = (
            f", position embeddings {tuple(before.shape)} -> {tuple(after.shape)}"
            if before is not None and before.shape != after.shape
            else ""
        )
        print(
            f"initialised from {path}: {loaded} tensors{resized}; kept init: "
            f"{len(result.missing_keys)}, not used: {len(result.unexpected_keys)}",
            flush=True,
        )


def start_weights(model, args, verbose: bool) -> None:
    """--pretrained / --pretrained-image into the fresh model, then the locks; one log line
    each (a resumed run loads its checkpoint over the weights, with the same locks)."""
    lines = []
    if args.pretrained:
        cfg = models.model_config(args.model)
        if args.force_quick_gelu:
            cfg["quick_gelu"] = True
        lines.append(pretrained.load_pretrained(model, args.pretrained, args.model, cfg))
    if args.pretrained_image:
        lines.append(pretrained.load_pretrained_image(model, args.pretrained_image))
    if args.lock_image or args.lock_text:
        counts = locking.lock_towers(model, args)
        lines.append(f"locked {counts['locked']:,} parameters; {counts['trainable']:,} trainable")
    if verbose:
        for line in lines:
            print(line, flush=True)


def param_groups(model: torch.nn.Module, wd: float) -> list[dict]:
    """No weight decay on 1-d parameters (norms, biases, embeddings' scale) and logit scale/bias."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "logit_" in name else decay).append(param)
    return [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]


def loader_batch_size(args) -> int:
    """Samples per rank and micro-batch the loader draws: --batch-size, x --acid-ratio."""
    return math.ceil(args.batch_size * args.acid_ratio)


def frozen_tokens(batch: dict, name: str, tokens: torch.Tensor, device) -> torch.Tensor:
    """A frozen model's tokens on the device: its own (batch["NAME_tokens"]) when its
    tokenizer differs from the student's, else the student's."""
    own = batch.get(f"{name}_tokens")
    return tokens if own is None else own.to(device, non_blocking=True)


@dataclass
class StepExtras:
    """The frozen models and ACID state a step uses beside the learner (None: not used)."""

    teacher: distill.Teacher | None = None
    reference: distill.Teacher | None = None  # ACID's, when not the teacher
    acid_counts: acid.SelectionCounts | None = None
    batch_size: int = 0  # trained samples per micro-batch under ACID
    self_distill: self_distill.SelfDistillConfig | None = None


def self_distill_inputs(cfg, batch: dict, host: dict, patches: int, seed) -> dict:
    """`host` plus this micro-batch's masked positions (`self_distill.draw_mask`), drawn on the
    host; the local crops join them on the device (`micro_batch`)."""
    mask = self_distill.draw_mask(len(batch["tokens"]), patches, cfg.mask_ratio, seed)
    return {**host, "self_distill": mask}


def prepare_micro_batch(
    batch: dict, host: dict, model, transform, device, autocast, extras: StepExtras
):
    """One loader batch and its `host_inputs` -> (micro-batch for
    `accumulate.forward_backward`, the teacher's features of its rows or None, ACID's chosen
    indices or None). Under ACID the learner (eval mode, no gradient) and the reference score
    the drawn set and the most learnable `batch_size` rows go on; a teacher that is not the
    reference runs on those rows only. No host sync: tests/test_trainer_step_syncs.py."""
    local_size = None
    if "self_distill" in host and extras.self_distill.local_crops:  # see self_distill_inputs
        local_size = extras.self_distill.local_size
    images, tokens, host = micro_batch(batch, transform, host, device, local_size)
    teacher, reference = extras.teacher, extras.reference
    taught, chosen = None, None
    if teacher is not None and (extras.acid_counts is None or reference is None):
        taught = teacher.features(images, frozen_tokens(batch, "teacher", tokens, device))
    if extras.acid_counts is not None:
        scores_against = taught
        if reference is not None:
            ref_tokens = frozen_tokens(batch, "reference", tokens, device)
            scores_against = reference.features(images, ref_tokens)
        was_training = model.training
        model.eval()
        with torch.no_grad(), autocast():
            learner = model(images, tokens)
        model.train(was_training)
        chosen = acid.select(acid.learnability(learner, scores_against), extras.batch_size)
        lang_ids = extras.acid_counts.lang_ids(batch["langs"]).to(device, non_blocking=True)
        extras.acid_counts.add_kept(lang_ids, chosen)
        teacher_tokens = frozen_tokens(batch, "teacher", tokens, device)
        images, tokens = images[chosen], tokens[chosen]
        if taught is not None:  # the teacher was the reference: its features of the kept rows
            taught = {k: v[chosen] if k in TEACHER_KEYS[:2] else v for k, v in taught.items()}
        elif teacher is not None:
            taught = teacher.features(images, teacher_tokens[chosen])
    return (images, tokens, host), taught, chosen


def lr_factor(args, total_steps: int):
    """The learning rate's factor of --lr at each step (a LambdaLR lambda): linear warmup
    ((step + 1) / warmup), then --lr-scheduler's shape, as open_clip's schedulers."""
    warmup, floor = args.warmup, args.min_lr / args.lr
    cooldown_start = total_steps - args.cooldown_steps
    end = args.lr_cooldown_end / args.lr

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if args.lr_scheduler == "const":
            return 1.0
        if args.lr_scheduler == "const-cooldown":
            if step < cooldown_start:
                return 1.0
            progress = (step - cooldown_start) / args.cooldown_steps
            return end + (1 - end) * max(0.0, 1 - progress) ** args.lr_cooldown_power
        progress = (step - warmup) / max(1, total_steps - warmup)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def ddp_bucket_bytes(model) -> int | None:
    """Bytes in DDP's gradient buckets (its own logging data), None without DDP."""
    model = getattr(model, "_orig_mod", model)  # under torch.compile
    if not isinstance(model, DistributedDataParallel):
        return None
    sizes = model._get_ddp_logging_data().get("bucket_sizes", "")
    return sum(int(size) for size in str(sizes).split(",") if size.strip())


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def has_running_stats(model: torch.nn.Module) -> bool:
    """Whether the model has buffers that its forward updates (batch-norm running stats)."""
    return any(
        isinstance(m, torch.nn.modules.batchnorm._NormBase) and m.track_running_stats
        for m in model.modules()
    )


def global_batch_size(args, samples_per_epoch: int, world_size: int) -> int:
    """The contrastive batch of one optimizer step, batch-size x ranks x accum-steps. What the
    loader draws for it (the same, or --acid-ratio times more) must fit in the training
    samples: a larger batch holds the same pair twice, a positive that is also its own
    negative (resampled draws repeat pairs just the same): UsageError."""
    per_step = world_size * args.accum_steps
    global_batch = args.batch_size * per_step
    drawn = loader_batch_size(args) * per_step
    if drawn <= samples_per_epoch:
        return global_batch
    if args.acid_ratio > 1:
        raise UsageError(
            f"--acid-ratio {args.acid_ratio} draws {drawn} samples per step, more than the "
            f"{samples_per_epoch} training samples per epoch"
        )
    fits = samples_per_epoch // per_step
    advice = (
        f"the largest --batch-size that fits is {fits}"
        if fits
        else "no --batch-size fits: use fewer ranks or --accum-steps"
    )
    raise UsageError(
        f"global batch {global_batch} ({args.batch_size} x {world_size} rank(s) x "
        f"{args.accum_steps} micro-batch(es)) is larger than the {samples_per_epoch} training "
        f"samples per epoch, so a batch would repeat pairs; {advice}"
    )


def main(argv=None) -> dict:
    args = parse_args(argv)
    try:
        models.check_model_name(args.model, "--model")
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    urls = data.expand_urls(args.train_data)
    sources, weights = None, None
    if args.train_data_weights:
        sources = data.expand_sources(args.train_data)
        weights = data.parse_weights(args.train_data_weights, len(sources))
        if args.online_curation:
            raise UsageError("--train-data-weights mixes sources; online curation reads one pool")
    online = None
    if args.online_curation:
        online, pool_size, expected = online_curation(args, urls)
        args.online_identity = online.identity()  # saved with the checkpoints' args
        samples_per_epoch = args.train_num_samples or max(1, round(expected))
    else:
        if args.t_en is not None or args.tail_fraction is not None or args.online_fixed_epoch:
            raise ValueError(
                "--t-en, --tail-fraction and --online-fixed-epoch need --online-curation"
            )
        samples_per_epoch = args.train_num_samples or data.count_samples(urls)
    dist_info = distributed.init_distributed(args.device, group_of_one=args.fsdp)
    device, is_main = dist_info.device, dist_info.is_main
    out_dir = Path(args.output_dir)
    ckpt_dir = out_dir / "checkpoints"
    if is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    remote = None
    if args.remote_sync:
        remote = RemoteSync(args.remote_sync)
        if is_main:
            try:
                remote.check()
            except (OSError, ValueError) as error:
                raise UsageError(
                    f"--remote-sync {args.remote_sync}: cannot write: {error}"
                ) from None
    # checked once the output folder exists: one that cannot be made is said first
    global_batch = global_batch_size(args, samples_per_epoch, dist_info.world_size)
    # samples the loader draws per step: the trained batch, or ACID's larger drawn sets
    drawn_per_step = loader_batch_size(args) * dist_info.world_size * args.accum_steps

    total_steps = args.steps or max(1, math.ceil(args.epochs * samples_per_epoch / drawn_per_step))

    # model, tokenizer, preprocessing
    torch.manual_seed(args.seed)
    torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls outside autocast, on GPU
    torch.backends.cudnn.allow_tf32 = True
    raw_model = models.build_model(
        args.model,
        args.loss,
        args.image_size,
        args.visual_token_keep,
        args.force_quick_gelu,
        args.caption_fusion,
    )
    if args.init_from:
        init_from(raw_model, args.init_from, is_main)
    start_weights(raw_model, args, is_main)
    if args.naflex:
        try:
            naflex.NaFlexVisionTransformer.enable(raw_model.visual, args.max_patches)
        except ValueError as error:
            raise UsageError(str(error)) from None
    sd_cfg = None
    if args.self_distill_from is not None:
        try:
            self_distill.check_tower(raw_model.visual)
        except ValueError as error:
            raise UsageError(str(error)) from None
        sd_cfg = self_distill_config(args, raw_model.visual, total_steps)
        raw_model.self_distill = self_distill.SelfDistill(raw_model.visual, sd_cfg)
        if is_main:
            print(
                f"self-distillation from step {sd_cfg.start_step}: {sd_cfg.local_crops} local "
                f"crops of {sd_cfg.local_size} px, {sd_cfg.mask_ratio:g} of the patches masked, "
                f"EMA decay {sd_cfg.ema_decay}",
                flush=True,
            )
    raw_model.to(device)
    if args.grad_checkpointing:
        raw_model.set_grad_checkpointing(True)
    replicated = []
    if args.fsdp:
        if not torch.distributed.is_initialized():
            raise ValueError(
                "--fsdp shards over ranks: launch with torchrun --nproc_per_node N (1 is fine)"
            )
        replicated = sharding.shard_model(raw_model, args.precision)
    checkpoint_format = args.checkpoint_format
    if checkpoint_format == "auto":
        checkpoint_format = "dcp" if args.fsdp else "pt"
    if args.fsdp and checkpoint_format != "dcp":
        raise ValueError("--fsdp writes dcp checkpoints (rank 0 cannot hold the whole state)")
    tokenizer = models.build_tokenizer(args.model, args.tokenizer, raw_model.context_length)
    teacher, reference, frozen_tokenizers = None, None, {}
    if args.distill_model:
        teacher, frozen_tokenizers["teacher"] = distill.build_frozen(
            args.distill_model, args.distill_pretrained, args.distill_tokenizer,
            args.distill_image_size, args.distill_logit_scale, args.model, device,
        )  # fmt: skip
        if is_main:
            print(
                f"distilling from {args.distill_model} ({args.distill_pretrained}) at "
                f"{teacher.image_size} px, weight {args.distill_loss_weight}",
                flush=True,
            )
    if args.reference_model:
        reference, frozen_tokenizers["reference"] = distill.build_frozen(
            args.reference_model, args.reference_pretrained, args.reference_tokenizer,
            None, None, args.model, device,
        )  # fmt: skip
    frozen_tokenizers = {k: v for k, v in frozen_tokenizers.items() if v is not None}
    train_tokenizer = (
        distill.TeacherTokens(tokenizer, **frozen_tokenizers) if frozen_tokenizers else tokenizer
    )
    acid_counts = None
    if args.acid_ratio > 1:
        acid_counts = acid.SelectionCounts(device)
        if is_main:
            print(
                f"ACID: {loader_batch_size(args)} drawn, {args.batch_size} trained per rank and "
                f"micro-batch; reference {args.reference_model or args.distill_model}",
                flush=True,
            )
    extras = StepExtras(teacher, reference, acid_counts, args.batch_size, sd_cfg)

    def acid_totals() -> dict:
        """ACID's drawn and kept per language over all ranks and the whole run."""
        ranks = distributed.all_gather_json(acid_counts.read(), dist_info)
        return acid.sum_counts([*ranks, acid_before])

    has_text_tower = getattr(raw_model, "has_text_tower", True)
    evals = eval_sets(args)
    transform = augment.DeviceTransform.for_model(raw_model, device)
    image_size = transform.size  # the side a decoded image keeps (JPEG draft); NaFlex's own

    # optimisation
    optimizer = torch.optim.AdamW(
        param_groups(raw_model, args.wd),
        lr=args.lr,
        betas=(args.beta1, args.beta2),
        eps=args.eps,
        fused=device.type == "cuda",  # skips a non-finite step on the device: optimizer_step
    )
    if args.cooldown_steps > total_steps:
        raise UsageError(f"--cooldown-steps {args.cooldown_steps} > the run's {total_steps} steps")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(args, total_steps))
    scaler = torch.amp.GradScaler(device.type, enabled=args.precision == "fp16")
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.precision)

    def autocast():
        if amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=amp_dtype)

    # resume
    step, data_state, elastic, rng_state = 0, None, None, None
    resume_path, ckpt = None, None
    if args.resume:
        warn = (lambda line: print(line, flush=True)) if is_main else (lambda line: None)
        if remote is not None and args.resume == "latest":
            if dist_info.local_rank == 0:  # one download per machine
                fetched = remote.fetch_newer(ckpt_dir)
                if fetched is not None:
                    print(f"fetched {fetched.name} from {args.remote_sync}", flush=True)
            distributed.all_gather_json(None, dist_info)  # the others wait for it
        resume_path, ckpt = checkpoint.resolve_and_load(args.resume, ckpt_dir, warn)
        chosen = distributed.all_gather_json(resume_path and str(resume_path), dist_info)
        if len(set(chosen)) > 1:  # a file one rank could read and another not: never diverge
            raise ValueError(f"the ranks would resume from different checkpoints: {chosen}")
    if resume_path is not None:
        if (ckpt["args"].get("self_distill_from") is None) != (sd_cfg is None):
            raise UsageError(
                f"{resume_path} was trained {'without' if sd_cfg else 'with'} "
                "--self-distill-from: resume it with the same self-distillation flags"
            )
        if resume_path.is_dir():
            checkpoint.load_sharded(resume_path, raw_model, optimizer)
        elif args.fsdp:
            raise ValueError(f"{resume_path} is a single-file checkpoint: resume it without --fsdp")
        else:
            raw_model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        step = ckpt["step"]
        recorded = ckpt["args"].get("online_identity")
        if online is not None and recorded is not None and recorded != online.identity():
            raise ValueError(
                f"{resume_path} balanced with {recorded}, this run with {online.identity()}: "
                "changing the online curation on resume would change the data already seen; "
                "start a new run for another threshold"
            )
        same_layout = (
            ckpt["world_size"] == dist_info.world_size
            and ckpt["data"][0]["num_workers"] == args.workers
        )
        if same_layout:
            rng_state = ckpt["rng"][dist_info.rank]
            data_state = ckpt["data"][dist_info.rank]
        else:
            elastic = (ckpt["data"], ckpt["world_size"])
        if is_main:
            print(f"resumed from {resume_path} at step {step}", flush=True)
    elif args.resume and is_main:
        print(f"no checkpoint in {ckpt_dir} yet: starting from scratch", flush=True)

    def make_dataset(**resume):
        return data.ShardBatches(
            urls,
            train_tokenizer,
            loader_batch_size(args),
            image_size,
            rank=dist_info.rank,
            world_size=dist_info.world_size,
            num_workers=args.workers,
            seed=args.seed,
            resampled=args.resampled,
            shuffle_buffer=args.shuffle_buffer,
            record_keys=args.record_samples,
            hflip=args.hflip,
            gpu_decode=args.gpu_decode,
            augmentation=augmentation_from(args),
            online=online,
            with_langs=args.acid_ratio > 1,
            sources=sources,
            weights=weights,
            **resume,
        )

    loader = data.ResumableLoader(
        make_dataset,
        args.workers,
        data_state,
        rank=dist_info.rank,
        world_size=dist_info.world_size,
        elastic=elastic,
        urls=urls,
        seed=args.seed,
        resampled=args.resampled,
        pin_memory=device.type == "cuda",
        mixed=sources is not None,
    )
    if loader.note and is_main:
        print(loader.note, flush=True)
    # the RNG of the model (patch dropout, visual-token masking) is restored after the loader
    # exists: starting its worker processes draws from the same generator
    if rng_state is not None:
        checkpoint.set_rng_state(rng_state)
    elif elastic is not None:
        torch.manual_seed(args.seed + 1000 * step + dist_info.rank)

    # FLOPs per sample, counted on the first batch before DDP wraps the model (a backward
    # through the bare model would fire DDP's gradient hooks; FSDP's run on every rank alike);
    # that batch is then trained on
    pending, sample_flops = [], None
    if step < total_steps:
        batch = next(loader)
        pending.append((batch, loader.last_keys))
        sample_flops = flops_per_sample(
            raw_model, args.loss, transform(batch), batch["tokens"].to(device)
        )
    # with self-distillation the forward is `self_distill.Learner`'s: its terms' gradients are
    # reduced with the rest; its head is unused before the switch-on (find_unused_parameters)
    model = raw_model if sd_cfg is None else self_distill.Learner(raw_model)
    if dist_info.enabled and not args.fsdp:
        model = DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            gradient_as_bucket_view=True,  # gradients live in the all-reduce buckets: no copy
            # every parameter is used in every backward, the same way
            static_graph=args.accum_steps == 1 and sd_cfg is None,
            find_unused_parameters=sd_cfg is not None,
            # buffers that training changes are batch-norm statistics (ResNet towers); the
            # others (open_clip's attention mask) are constants: no broadcast every forward
            broadcast_buffers=has_running_stats(raw_model),
        )
    # DDP all-reduces once per step; FSDP reduce-scatters every micro-batch (see `sharding`)
    no_sync = model.no_sync if dist_info.enabled and not args.fsdp else None
    checkpointer = None
    if checkpoint_format == "dcp":
        checkpointer = checkpoint.ShardedCheckpointer(
            ckpt_dir, args.keep_checkpoints, is_main, use_async=not args.sync_checkpoint
        )
        if remote is not None and is_main:
            checkpointer.on_publish = lambda path: remote.upload_checkpoint(
                path, args.keep_checkpoints
            )
    if args.compile:
        if hasattr(raw_model, "trim_multiple"):
            raw_model.trim_multiple = 8  # caption lengths in steps of 8: few recompilations
        model = torch.compile(model, backend=args.compile_backend)
    writer = None
    if is_main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out_dir / "tensorboard"))
        print(
            f"training {args.model} ({args.loss} loss) for {total_steps} steps: "
            f"{samples_per_epoch} samples/epoch, global batch {global_batch} "
            f"({args.batch_size} x {dist_info.world_size} rank(s) x {args.accum_steps} "
            f"micro-batch(es), all in one contrastive loss) on {device.type}",
            flush=True,
        )
        if sources is not None:
            mixed = ", ".join(
                f"{len(urls)} shards x {w:.3f}" for urls, w in zip(sources, weights, strict=True)
            )
            print(f"mixing {len(sources)} sources per data stream: {mixed}", flush=True)
        if online is not None:
            t = ", ".join(f"{lang} {t:g}" for lang, (t, _) in sorted(online.thresholds.items()))
            print(
                f"online curation of {args.online_curation}: {pool_size} pool images, "
                f"{expected:.0f} kept per epoch expected (the epoch length); thresholds: {t}",
                flush=True,
            )
    keys_file = None
    if args.record_samples:
        out_dir.mkdir(parents=True, exist_ok=True)
        keys_file = (out_dir / f"samples_rank{dist_info.rank}.txt").open("a", encoding="utf-8")

    # the loop
    eval_row = None
    if evals and step == 0 and (args.pretrained or args.pretrained_image or args.init_from):
        eval_row = run_evals(  # the starting point of a fine-tune, on the scaling plot's x = 0
            evals, raw_model, tokenizer, transform, autocast, dist_info, 0, 0, sample_flops,
            writer, out_dir, args.model,
        )  # fmt: skip
    model.train()
    rates, last_time, last_step, loss_sum = [], time.perf_counter(), step, 0.0
    finite_steps = 0.0
    nonfinite = NonFiniteSteps(device, ckpt.get("nonfinite_steps", 0) if ckpt else 0)
    acid_before = (ckpt or {}).get("acid", {})  # ACID's counts up to the resumed checkpoint
    stalls = []  # seconds the training loop waited for each checkpoint
    state_bytes = None
    sd_started = sd_cfg is not None and bool(raw_model.self_distill.started)
    sd_patches = 0
    if sd_cfg is not None:
        sd_patches = math.prod(raw_model.visual.grid_size)
    while step < total_steps:
        micro_batches, teacher_features = [], []
        sd_on = sd_cfg is not None and step >= sd_cfg.start_step
        if sd_on and not sd_started:
            if args.fsdp:  # a forward without backward (an evaluation) leaves the root gathered
                raw_model.reshard()
            raw_model.self_distill.start(raw_model.visual)
            sd_started = True
            if is_main:
                print(f"step {step + 1}: self-distillation on, the teacher copied", flush=True)
        for micro in range(args.accum_steps):
            batch, keys = pending.pop() if pending else (next(loader), loader.last_keys)
            host = host_inputs(batch, raw_model)  # CPU work on the CPU batch
            if sd_on:
                seed = (args.seed, step, dist_info.rank, micro)
                host = self_distill_inputs(sd_cfg, batch, host, sd_patches, seed)
            micro, taught, chosen = prepare_micro_batch(
                batch, host, raw_model, transform, device, autocast, extras
            )
            if keys_file:
                if chosen is not None:
                    keys = [keys[i] for i in chosen.tolist()]  # a host sync: --record-samples
                keys_file.write("".join(f"{step + 1}\t{k}\n" for k in keys))
                keys_file.flush()  # a killed rank keeps the record of what it trained on
            micro_batches.append(micro)
            if taught is not None:
                teacher_features.append(taught)
        step_loss = accumulate.forward_backward(
            model,
            micro_batches,
            args.loss,
            autocast=autocast,
            backward=lambda loss: scaler.scale(loss).backward(),
            no_sync=no_sync,
            caption_weight=args.caption_loss_weight,
            siglip_exchange=args.siglip_exchange,
            teacher=teacher_features,
            distill_weight=args.distill_loss_weight,
        )
        skipped = optimizer_step(
            raw_model, optimizer, scaler, args.grad_clip, replicated, loss=step_loss
        )
        # on the device, read at log lines: a skipped step's loss is left out of the mean
        loss_sum = loss_sum + torch.where(skipped > 0, 0.0, step_loss)
        finite_steps = finite_steps + (1 - skipped)
        nonfinite.add(skipped)
        if sd_on:
            if args.fsdp:
                raw_model.reshard()
            raw_model.self_distill.after_step(raw_model.visual)
        if state_bytes is None:  # parameters, gradients and AdamW state held by this rank
            state_bytes = sharding.training_state_bytes(raw_model, optimizer)
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        if loss_parts(args.loss)[0] == "clip":
            with torch.no_grad():
                raw_model.logit_scale.clamp_(0, math.log(100))
        step += 1

        if step % args.log_every == 0 or step == total_steps:
            nonfinite.check(step, args.max_nonfinite)
            finite = float(finite_steps)  # steps of the interval that were not skipped
            mean_loss = distributed.mean_across_ranks(
                float(loss_sum) / finite if finite else math.nan, dist_info
            )
            now = time.perf_counter()
            rate = global_batch * (step - last_step) / (now - last_time)
            if last_step > 0 or resume_path is not None:
                rates.append(rate)  # the first interval includes start-up
            lr = optimizer.param_groups[0]["lr"]
            dropped = sum(loader.dropped().values())
            if online is not None:
                online_counts = data.sum_online_counts(
                    distributed.all_gather_json(loader.online_counts(), dist_info)
                )
            if acid_counts is not None:  # drawn and kept per language, all ranks
                selection = acid_totals()
            if sd_cfg is not None:  # the terms' means over the interval (0 before the switch)
                sd_terms = [
                    distributed.mean_across_ranks(x, dist_info)
                    for x in raw_model.self_distill.read_terms()
                ]
            if is_main:
                epoch = step * drawn_per_step / samples_per_epoch
                skips = f" skipped {nonfinite.total} non-finite" if nonfinite.total else ""
                print(
                    f"step {step}/{total_steps} epoch {epoch:.2f} loss {mean_loss:.4f} "
                    f"lr {lr:.2e} samples/s {rate:.1f} dropped {dropped}{skips}",
                    flush=True,
                )
                writer.add_scalar("train/loss", mean_loss, step)
                writer.add_scalar("train/lr", lr, step)
                writer.add_scalar("train/samples_per_s", rate, step)
                if has_text_tower:
                    scale = raw_model.logit_scale.exp().item()
                    writer.add_scalar("train/logit_scale", scale, step)
                row = {
                    "step": step,
                    "samples_seen": step * global_batch,
                    "train_flops": step * global_batch * sample_flops,
                    "loss": mean_loss if math.isfinite(mean_loss) else None,
                    "lr": lr,
                    "nonfinite_steps": nonfinite.total,
                }
                if online is not None:
                    row["online"] = online_counts  # kept / skipped per language, all ranks
                if acid_counts is not None:
                    row["acid"] = selection
                if sd_cfg is not None:
                    row["silc_loss"], row["tips_loss"] = sd_terms
                    writer.add_scalar("train/silc_loss", sd_terms[0], step)
                    writer.add_scalar("train/tips_loss", sd_terms[1], step)
                with (out_dir / "metrics.jsonl").open("a", encoding="utf-8") as f:
                    f.write(json.dumps(row) + "\n")
            last_time, last_step, loss_sum, finite_steps = now, step, 0.0, 0.0

        if evals and (step == total_steps or (args.eval_every and step % args.eval_every == 0)):
            eval_row = run_evals(
                evals, raw_model, tokenizer, transform, autocast, dist_info, step,
                step * global_batch, sample_flops, writer, out_dir, args.model,
            )  # fmt: skip
        if step % args.save_every == 0 or step == total_steps:
            nonfinite.check(step, args.max_nonfinite)
            check_finite_weights(raw_model, step)
            started = time.perf_counter()
            totals = {"nonfinite_steps": nonfinite.total}
            if acid_counts is not None:
                totals["acid"] = acid_totals()
            save_checkpoint(
                args, raw_model, optimizer, scheduler, scaler, loader, step, dist_info, ckpt_dir,
                checkpointer, totals, remote,
            )  # fmt: skip
            stalls.append(time.perf_counter() - started)
        if args.exit_after is not None and step >= args.exit_after and step < total_steps:
            if is_main:
                print(f"stopping after step {step} (--exit-after)", flush=True)
            break

    if checkpointer is not None:
        checkpointer.wait()
    if remote is not None and is_main:
        remote.wait()  # the last checkpoint is at URI too before the run says done
    nonfinite.check(step, 0)  # the total, for the summary
    if keys_file:
        keys_file.close()
    summary = {
        "checkpoint_stall_s": stalls,
        "state_bytes_per_rank": state_bytes,
        # what DDP all-reduces per step: its buckets hold the gradients of trainable parameters
        "ddp_bucket_bytes": ddp_bucket_bytes(model),
        "steps": step,
        "samples_per_s": sorted(rates)[len(rates) // 2] if rates else None,
        "peak_memory_gib": peak_memory_gib(device),
        "dropped": loader.dropped(),
        "shard_io": loader.io_counts(),  # read / skipped samples, shard_retries, this start
        "nonfinite_steps": nonfinite.total,
        "flops_per_sample": sample_flops,
    }
    if acid_counts is not None:
        summary["acid"] = acid_totals()
    if sd_cfg is not None:
        summary["self_distill"] = {"start_step": sd_cfg.start_step, "started": sd_started}
    if transform.undecodable:  # --gpu-decode: this rank's JPEGs that no decoder could read
        summary["undecodable_on_device"] = transform.undecodable
    if eval_row is not None:
        summary["eval"] = eval_row["eval"]
    if step == total_steps and args.val_data and is_main and not has_text_tower:
        print("--val-data: a caption-only model has no text embeddings to retrieve", flush=True)
    elif step == total_steps and args.val_data and (is_main or args.fsdp):
        # rank 0 alone, or under FSDP every rank (each block's forward gathers from all)
        raw_model.eval()
        batches = data.eval_batches(
            data.expand_urls(args.val_data),
            tokenizer,
            args.batch_size,
            args.val_max_samples,
            image_size,
        )
        image_emb, text_emb = evaluate.embed(raw_model, batches, transform, device, autocast)
        summary["retrieval"] = evaluate.recall_at_k(image_emb, text_emb)
        summary["retrieval"]["pairs"] = len(image_emb)
        if is_main:
            for name, value in summary["retrieval"].items():
                writer.add_scalar(f"val/{name}", value, step)
            print(f"held-out retrieval: {json.dumps(summary['retrieval'])}", flush=True)
    if is_main:
        writer.close()
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        if remote is not None:
            remote.upload_logs(out_dir)
        print(f"done: {json.dumps(summary)}", flush=True)
    distributed.cleanup(dist_info)
    return summary


def run_evals(
    evals, model, tokenizer, transform, autocast, dist_info, step, samples_seen, sample_flops,
    writer, out_dir, model_name,
) -> dict:  # fmt: skip
    """Every --eval set on all ranks; rank 0 logs one metrics.jsonl row and the scalars."""
    row = {
        "step": step,
        "model": model_name,
        "samples_seen": samples_seen,
        "train_flops": samples_seen * sample_flops,
        "eval": {},
    }
    started = time.perf_counter()
    for name, evaluator in evals:
        result = evaluator.run(model, tokenizer, transform, autocast, dist_info)
        row["eval"].update(evaluate.flat_metrics(name, result))
    if dist_info.is_main:
        for key, value in row["eval"].items():
            writer.add_scalar(f"eval/{key}", value, step)
        with (out_dir / "metrics.jsonl").open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        shown = {k: round(v, 4) for k, v in row["eval"].items() if k.count("/") == 1}
        print(
            f"eval at step {step} ({time.perf_counter() - started:.1f} s): {json.dumps(shown)}",
            flush=True,
        )
    return row


def online_curation(args, urls):
    """(OnlineCuration, pool images, expected kept per epoch), after checking that the shards
    are pool shards of this run (their manifest.json names it)."""
    # deferred on purpose: numba and the curation library load only with --online-curation
    from curation.curate.online import OnlineCuration, pool_from_matches

    manifest = data._read_json_next_to(urls[0], "manifest.json") or {}
    source = manifest.get("source", {})
    if source.get("pool") != "matched":
        raise ValueError(
            f"{urls[0]} is not a pool shard (its manifest.json has no source.pool = matched): "
            "export them with `make shards POOL=matched`"
        )
    run_dir = args.online_curation.rstrip("/")
    if os.path.abspath(source.get("run_dir", "")) != os.path.abspath(run_dir):
        raise ValueError(
            f"these pool shards come from {source.get('run_dir')}, not --online-curation {run_dir}"
        )
    online = OnlineCuration(
        run_dir, args.t_en, args.tail_fraction, args.curation_seed, args.online_fixed_epoch
    )
    pool = pool_from_matches(run_dir)
    return online, len(pool), online.expected_kept(pool)


def save_checkpoint(
    args, model, optimizer, scheduler, scaler, loader, step, dist_info, ckpt_dir, checkpointer,
    totals=None, remote=None,
):  # fmt: skip
    """Every rank contributes its RNG and data position; rank 0 writes a .pt, or every rank its
    shards of a DCP folder (`checkpointer`). `totals`: run-wide counters a resume carries on
    (skipped non-finite steps, ACID's drawn and kept per language)."""
    per_rank = distributed.all_gather_json(
        {"rng": checkpoint.rng_state(), "data": loader.state_dict()}, dist_info
    )
    state = {
        "step": step,
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "rng": [r["rng"] for r in per_rank],
        "data": [r["data"] for r in per_rank],
        "world_size": dist_info.world_size,
        "args": dict(vars(args)),
        **(totals or {}),
    }
    if checkpointer is not None:
        checkpointer.save(model, optimizer, state, step)
        return
    if not dist_info.is_main:
        return
    state.update(model=model.state_dict(), optimizer=optimizer.state_dict())
    path = checkpoint.save(state, ckpt_dir, step, keep=args.keep_checkpoints)
    print(f"saved {path}", flush=True)
    if remote is not None:
        remote.upload_checkpoint(path, args.keep_checkpoints)


def cli(argv=None) -> int:
    """`main` with the trainer's error path: one line on stderr, `error: ...`, and exit 2 for
    flags that cannot work (UsageError), 1 for other bad input or I/O."""
    try:
        main(argv)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, UsageError) else 1
    return 0


if __name__ == "__main__":
    sys.exit(cli())
