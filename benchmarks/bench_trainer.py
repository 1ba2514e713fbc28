"""Training throughput of trainer/train.py against open_clip_train on the same shards.

Both trainers run the same model, per-rank batch, precision, data loader workers, optimizer
settings and shards (real photographs from scikit-image with CC3M captions, written as
WebDataset shards), one process each, alternating, `--rounds` times. Reported per trainer:
median samples/s over the steps after `--warmup-steps` (best round), peak memory (CUDA
max_memory_allocated on GPU, the training process's max RSS on CPU) and MFU from the model's
FLOPs per sample (forward + backward, counted with torch.utils.flop_counter).

    python benchmarks/bench_trainer.py                 # CPU: tiny model, fp32
    python benchmarks/bench_trainer.py --models ViT-B-32,ViT-B-16 --batch-size 256  # GPU, bf16
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

# dense bf16 peak, TFLOP/s
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0}

# open_clip_train pins webdataset<=0.2.86; the 0.2.111 that img2dataset brings emits an empty
# dict between shards, which its own group_by_keys_nothrow does not expect: drop those.
OPEN_CLIP_TRAIN = """
import resource, sys, torch, open_clip
import open_clip_train.data as oc_data
open_clip.add_model_config(sys.argv[1])
_group = oc_data.group_by_keys_nothrow
oc_data.group_by_keys_nothrow = lambda files, **kw: _group((f for f in files if f), **kw)
from open_clip_train.main import main
main(sys.argv[2:])
peak = (torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available()
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
print(f"BENCH_PEAK_GIB {peak}")
"""


def parse_args():
    gpu = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", default="ViT-B-32,ViT-B-16" if gpu else "tiny-clip")
    p.add_argument("--batch-size", type=int, default=256 if gpu else 32, help="per process")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="bf16" if gpu else "fp32")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup-steps", type=int, default=10)
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument(
        "--threads",
        type=int,
        default=None if gpu else 1,
        help="OMP_NUM_THREADS for both trainers (CPU default 1: workers use the other cores)",
    )
    p.add_argument(
        "--peak-tflops", type=float, help="accelerator peak for MFU (default: known GPUs)"
    )
    p.add_argument("--workdir", help="keep shards and logs here (default: a temp dir)")
    return p.parse_args()


def model_info(name: str, batch: int, device: str) -> tuple[int, float]:
    """(image size, training FLOPs per sample)."""
    import open_clip
    from torch.utils.flop_counter import FlopCounterMode

    from trainer.losses import clip_loss

    open_clip.add_model_config(ROOT / "trainer" / "model_configs")
    model = open_clip.create_model(name, output_dict=True).to(device)
    size = model.visual.image_size
    size = size[0] if isinstance(size, tuple) else size
    n = 4
    images = torch.randn(n, 3, size, size, device=device)
    tokens = torch.randint(0, 1000, (n, model.context_length), device=device)
    with FlopCounterMode(display=False) as counter:
        out = model(images, tokens)
        clip_loss(out["image_features"], out["text_features"], out["logit_scale"]).backward()
    return size, counter.get_total_flops() / n


def make_data(workdir: Path, samples: int, image_size: int, shards: int) -> tuple[str, int]:
    from trainer_shards import make_shards

    out = workdir / f"shards_{image_size}px_{samples}"
    per_shard = math.ceil(samples / shards)
    if not (out / "sizes.json").exists():
        make_shards(out, shards, per_shard, image_size=image_size)
    return str(out / f"{{00000..{shards - 1:05d}}}.tar"), per_shard * shards


def run(cmd: list[str], log: Path, threads: int | None) -> str:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    log.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(
            f"error: {cmd[:4]} failed, see {log}:\n{(proc.stdout + proc.stderr)[-2000:]}"
        )
    return proc.stdout + proc.stderr


def ours(args, model, data, n_samples, workdir, tag) -> tuple[float, float]:
    out_dir = workdir / f"ours_{model}_{tag}"
    cmd = [
        sys.executable, str(ROOT / "trainer" / "train.py"),
        "--train-data", data, "--train-num-samples", str(n_samples),
        "--model", model, "--batch-size", str(args.batch_size), "--steps", str(args.steps),
        "--precision", args.precision, "--workers", str(args.workers),
        "--lr", "5e-4", "--warmup", "5", "--wd", "0.1", "--grad-clip", "1.0",
        "--log-every", "1", "--save-every", str(10**9), "--keep-checkpoints", "1",
        "--output-dir", str(out_dir),
    ]  # fmt: skip
    text = run(cmd, workdir / f"ours_{model}_{tag}.log", args.threads)
    rates = [float(r) for r in re.findall(r"^step \d+/\d+ .* samples/s ([\d.]+)", text, re.M)]
    summary = json.loads((out_dir / "summary.json").read_text())
    return statistics.median(rates[args.warmup_steps :]), summary["peak_memory_gib"]


def theirs(args, model, data, n_samples, workdir, tag) -> tuple[float, float]:
    precision = {"fp32": "fp32", "bf16": "amp_bf16"}[args.precision]
    cmd = [
        sys.executable, "-c", OPEN_CLIP_TRAIN, str(ROOT / "trainer" / "model_configs"),
        "--train-data", data, "--dataset-type", "webdataset",
        "--train-num-samples", str(args.steps * args.batch_size),
        "--model", model, "--batch-size", str(args.batch_size), "--epochs", "1",
        "--precision", precision, "--workers", str(args.workers),
        "--lr", "5e-4", "--warmup", "5", "--wd", "0.1", "--beta1", "0.9", "--beta2", "0.95",
        "--eps", "1e-6", "--grad-clip-norm", "1.0", "--local-loss", "--gather-with-grad",
        "--log-every-n-steps", "1", "--save-frequency", "0", "--report-to", "",
        "--logs", str(workdir / "open_clip_logs"), "--name", f"{model}_{tag}_{os.getpid()}",
    ]  # fmt: skip
    text = run(cmd, workdir / f"open_clip_{model}_{tag}.log", args.threads)
    rates = [float(r) for r in re.findall(r"Batch \(t\): [\d.]+, ([\d.]+)/s,", text)]
    if len(rates) <= args.warmup_steps:
        raise SystemExit(f"error: open_clip_train logged {len(rates)} steps, see its log")
    peak = float(re.search(r"BENCH_PEAK_GIB ([\d.]+)", text).group(1))
    return statistics.median(rates[args.warmup_steps :]), peak


def peak_tflops(args) -> float | None:
    if args.peak_tflops:
        return args.peak_tflops
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    return None


def main():
    args = parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    where = torch.cuda.get_device_name() if device == "cuda" else f"CPU, {os.cpu_count()} cores"
    peak = peak_tflops(args)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.workdir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        for model in args.models.split(","):
            image_size, flops = model_info(model, args.batch_size, device)
            n = args.steps * args.batch_size
            data, n_samples = make_data(workdir, n, image_size, max(4, args.workers))
            results = {"ours": [], "open_clip_train": []}
            for r in range(args.rounds):
                results["ours"].append(ours(args, model, data, n_samples, workdir, r))
                results["open_clip_train"].append(theirs(args, model, data, n_samples, workdir, r))
            print(
                f"== {model} on {where}: batch {args.batch_size}, {args.precision}, "
                f"{args.workers} workers, {args.threads or 'default'} threads, "
                f"{args.steps} steps (median after {args.warmup_steps}), "
                f"best of {args.rounds} rounds; {flops / 1e9:.2f} GFLOP/sample (fwd+bwd)"
            )
            best = {}
            for name, runs in results.items():
                rate, mem = max(runs)
                best[name] = rate
                mfu = f"{100 * rate * flops / (peak * 1e12):.1f}%" if peak else "n/a (no peak)"
                print(
                    f"  {name:16s} {rate:9.1f} samples/s  peak mem {mem:6.2f} GiB  "
                    f"{rate * flops / 1e9:9.1f} GFLOP/s  MFU {mfu}  "
                    f"(rounds: {', '.join(f'{r:.1f}' for r, _ in runs)})"
                )
            print(f"  ratio ours / open_clip_train: {best['ours'] / best['open_clip_train']:.2f}x")


if __name__ == "__main__":
    main()
