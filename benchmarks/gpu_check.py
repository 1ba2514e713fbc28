"""The one prepared device check: the trainer's GPU paths, one PASS / FAIL / SKIP line each.

Run through benchmarks/gpu_check.sh (which installs carried wheels first). On one H100 it stays
within 8 minutes; `--dry-run` runs the same checks on the CPU with a tiny model and few steps
(the suite runs it), skipping only what needs CUDA. Every figure it prints goes to
docs/benchmarks.md with the card it ran on.

  jpeg_kinds   the worker's triage of six JPEG kinds and the device decode of those sent to it
               (a JPEG no decoder reads costs one black image, counted, not the batch)
  decode_race  nvJPEG output against the CPU decode while the stream has queued work, with
               torchvision's decode_jpeg as is and with trainer.augment's (stream synchronised)
  syncs        host synchronisations in one training step of a CLIP and a caption model
               (torch.cuda.set_sync_debug_mode)
  fsdp_dcp     one-rank FSDP2, bf16, fused AdamW, async DCP: a run stopped and resumed equals
               the uninterrupted one (same batches; bf16 on GPU: not the same bits; the dry
               run checks the resume only, the suite's 2-rank FSDP tests compare already)
  compile      DDP path with --compile (inductor) and --grad-checkpointing: runs, loss falls
  train        trainer/train.py at the largest batch that fits: eager with --eval, resume,
               --gpu-decode --hflip --accum-steps 2, --compile; samples/s, MFU, peak GiB,
               checkpoint stall each; then benchmarks/bench_trainer.py against open_clip_train,
               and its towers section (state bytes and step time with --lock-image, the
               teacher's share of a distilled step)
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import time
import traceback
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # trainer_shards: shards of scikit-image photographs

CHECKS = ("jpeg_kinds", "decode_race", "syncs", "fsdp_dcp", "compile", "train")
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}
RESULTS: list[tuple[str, str]] = []


def say(status: str, name: str, detail: str) -> None:
    RESULTS.append((status, name))
    print(f"{status} {name}: {detail}", flush=True)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny model, few steps")
    p.add_argument("--out", default="out/gpu_check", help="shards, runs and logs")
    p.add_argument("--only", default=",".join(CHECKS), help="comma-separated checks to run")
    p.add_argument("--model", help="train check's model (default ViT-B-16; tiny-clip dry)")
    return p.parse_args(argv)


# -- jpeg kinds ------------------------------------------------------------------------------------


def check_jpeg_kinds(device: torch.device, args) -> None:
    from trainer_shards import jpeg_kinds, source_images

    from trainer import augment
    from trainer import data as trainer_data

    kinds = jpeg_kinds(source_images()[0].resize((256, 256)))
    routed = {k: trainer_data.jpeg_for_device(v) for k, v in kinds.items()}
    sent = sorted(k for k, r in routed.items() if isinstance(r, tuple))
    want = ["baseline 4:2:0", "baseline 4:4:4", "no quantization tables"]
    encoded = [routed[k] for k in sent]
    sizes = torch.tensor([r[0] for r in encoded], dtype=torch.int32)
    images, failed = augment.decode_on_device([r[1] for r in encoded], device, sizes)
    worst = 0.0
    for name, image in zip(sent, images):
        if name == "no quantization tables":
            continue
        reference = trainer_data.decode_image(kinds[name]).permute(2, 0, 1).float()
        worst = max(worst, (image.float().cpu() - reference).abs().mean().item())
    worker = [
        k for k in kinds if routed[k] is None and trainer_data.decode_image(kinds[k]) is not None
    ]
    ok = sent == want and failed == 1 and worst < 3.0 and len(worker) == 3
    say(
        "PASS" if ok else "FAIL",
        "jpeg_kinds",
        f"to device {sent}, decoded in the worker {sorted(worker)}, unreadable counted {failed}, "
        f"mean |device - PIL| {worst:.2f} (of 255)",
    )


def check_decode_race(device: torch.device, args) -> None:
    if device.type != "cuda":
        say("SKIP", "decode_race", "needs CUDA")
        return
    from torchvision.io import ImageReadMode, decode_jpeg
    from trainer_shards import source_images

    from trainer import augment

    photos = [p.resize((512, 512)) for p in source_images()[:16]]
    files = []
    for p in photos:
        buf = io.BytesIO()
        p.save(buf, format="JPEG", quality=90)
        files.append(torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8))
    reference = [decode_jpeg(f, mode=ImageReadMode.RGB).to(device) for f in files]
    torch.cuda.synchronize()
    bad = {"as is": 0, "synchronised": 0}
    for _ in range(25):
        for name in bad:
            x = torch.randn(4096, 4096, device=device)
            for _ in range(6):  # queued work that allocates and frees on this stream
                x = (x @ x) / 4096
            del x
            if name == "as is":
                out = decode_jpeg(files, mode=ImageReadMode.RGB, device=device)
            else:
                out, _ = augment.decode_on_device(files, device)
            torch.cuda.synchronize()
            bad[name] += sum(
                int((o.float() - r.float()).abs().mean() > 3.0) for o, r in zip(out, reference)
            )
    total = 25 * len(files)
    say(
        "PASS" if bad["synchronised"] == 0 else "FAIL",
        "decode_race",
        f"corrupted images of {total}: decode_jpeg as is {bad['as is']}, trainer.augment "
        f"{bad['synchronised']}",
    )


# -- one training step's host syncs ----------------------------------------------------------------


def check_syncs(device: torch.device, args) -> None:
    if device.type != "cuda":
        say("SKIP", "syncs", "needs CUDA (torch.cuda.set_sync_debug_mode)")
        return
    caption_model = "tiny-caption" if args.dry_run else "openvision2-ViT-B-16"
    from trainer.augment import Augmentation

    jitter = Augmentation(hflip=True, color_jitter=(0.4, 0.4, 0.4, 0.1), grayscale=0.2)
    cases = ((args.model, "clip", None), (caption_model, "caption", None),
             (args.model, "clip", jitter))  # fmt: skip
    counts = [
        (
            f"{name} {loss}{' colour jitter' if aug else ''}",
            *_syncs_in_a_step(name, loss, device, aug),
        )
        for name, loss, aug in cases
    ]
    say(
        "PASS" if not any(n for _, n, _ in counts) else "FAIL",
        "syncs",
        "; ".join(f"{what}: {n} in one step {where}" for what, n, where in counts),
    )


def _syncs_in_a_step(name: str, loss: str, device: torch.device, aug=None) -> tuple[int, list[str]]:
    """Host syncs in train.py's step (host inputs, device copies and transform, forward +
    backward in bf16, clipped fused AdamW with the non-finite guard) after a warm-up step; and
    the first lines."""
    import numpy as np
    from trainer_shards import captions, source_images

    from trainer import accumulate, augment, models
    from trainer import data as trainer_data
    from trainer.train import NonFiniteSteps, host_inputs, micro_batch, optimizer_step

    model = models.build_model(name, loss).to(device)
    tokenizer = models.build_tokenizer(name, None, model.context_length)
    transform = augment.DeviceTransform.for_model(model, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    images = [torch.from_numpy(np.array(p.resize((256, 256)))) for p in source_images()[:8]]
    batch = trainer_data.make_batch(images, captions(8), tokenizer, 0, True, True, aug=aug)
    batch = {k: v.pin_memory() if torch.is_tensor(v) else v for k, v in batch.items()}

    nonfinite = NonFiniteSteps(device)

    def step():
        micro = [micro_batch(batch, transform, host_inputs(batch, model), device)]
        bf16 = lambda: torch.autocast("cuda", dtype=torch.bfloat16)  # noqa: E731
        step_loss = accumulate.forward_backward(model, micro, loss, autocast=bf16)
        nonfinite.add(optimizer_step(model, optimizer, scaler, grad_clip=1.0, loss=step_loss))
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up: lazy initialisation may synchronise once
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode(1)
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    return len(syncs), sorted({f"{Path(w.filename).name}:{w.lineno}" for w in syncs})[:5]


# -- trainer runs ----------------------------------------------------------------------------------


def train(args, out: Path, *extra: str, ranks: int = 0) -> dict:
    """trainer/train.py (under torchrun with `ranks`); its summary.json, or raises with the
    log's last lines."""
    launcher = [sys.executable]
    if ranks:
        launcher += ["-m", "torch.distributed.run", f"--nproc_per_node={ranks}", "--standalone"]
    cmd = [*launcher, str(ROOT / "trainer" / "train.py"), "--train-data", args.shards,
           "--model", args.model, "--output-dir", str(out), "--log-every", "5",
           "--workers", "2" if args.dry_run else "8", *extra]  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    log = out.with_suffix(".log")
    with log.open("a") as f:
        result = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
    if result.returncode != 0:
        tail = log.read_text().strip().splitlines()[-3:]
        raise RuntimeError(f"{' '.join(extra[:6])}... exited {result.returncode}: {tail}")
    return json.loads((out / "summary.json").read_text())


def losses(out: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def check_fsdp_dcp(device: torch.device, args) -> None:
    precision = "fp32" if args.dry_run else "bf16"
    common = ["--fsdp", "--precision", precision, "--batch-size", str(args.small_batch),
              "--steps", str(args.short_steps), "--save-every", str(args.short_steps // 2),
              "--keep-checkpoints", "0", "--log-every", "1"]  # fmt: skip
    full, parts = args.work / "fsdp_full", args.work / "fsdp_parts"
    half = args.short_steps // 2
    train(args, parts, *common, "--exit-after", str(half), ranks=1)
    summary = train(args, parts, *common, "--resume", "latest", ranks=1)
    b = losses(parts)
    if args.dry_run:  # the suite's 2-rank FSDP tests compare with an uninterrupted run already
        ok, compared = sorted(b) == list(range(1, args.short_steps + 1)), "every step logged"
    else:  # bf16 on a GPU: the same batches, not the same bits
        train(args, full, *common, ranks=1)
        a = losses(full)
        worst = max(abs(a[s] - b[s]) / abs(a[s]) for s in a)
        ok = sorted(a) == sorted(b) and worst <= 2e-2
        compared = f"worst relative loss difference to an uninterrupted run {worst:.2e} (<= 2e-2)"
    say(
        "PASS" if ok else "FAIL",
        "fsdp_dcp",
        f"stopped at step {half}, resumed: {compared}; checkpoint stall "
        f"{summary['checkpoint_stall_s']} s",
    )


def check_compile(device: torch.device, args) -> None:
    if args.dry_run:
        say("SKIP", "compile", "inductor on the CPU takes minutes: GPU run only")
        return
    out = args.work / "compile"
    train(args, out, "--compile", "--grad-checkpointing", "--precision", "bf16",
          "--batch-size", str(args.small_batch), "--steps", "30", ranks=1)  # fmt: skip
    seen = losses(out)
    first, last = seen[min(seen)], seen[max(seen)]
    say("PASS" if last < first else "FAIL", "compile", f"loss {first:.3f} -> {last:.3f}")


def largest_batch(args) -> int:
    if args.dry_run:
        return 16
    for batch in (1024, 512, 256, 128):  # a probe is ~20 s on an H100: few of them
        try:
            train(args, args.work / f"probe_{batch}", "--precision", "bf16", "--batch-size",
                  str(batch), "--steps", "3")  # fmt: skip
            return batch
        except RuntimeError:
            continue
    raise RuntimeError("no batch size from 1024 down to 128 fits")


def figures(summary: dict, batch: int, peak: float | None) -> str:
    rate = summary["samples_per_s"]  # None: too few steps logged for a steady rate
    mfu = "n/a"
    if peak and rate:
        mfu = f"{100 * rate * summary['flops_per_sample'] / (peak * 1e12):.1f}%"
    stall = summary["checkpoint_stall_s"]
    return (
        f"batch {batch}: {f'{rate:.1f}' if rate else 'n/a'} samples/s, MFU {mfu}, peak "
        f"{summary['peak_memory_gib']:.1f} GiB, checkpoint stall {max(stall, default=0):.2f} s"
    )


def check_train(device: torch.device, args) -> None:
    peak = None
    if device.type == "cuda":
        name = torch.cuda.get_device_name()
        peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    batch = largest_batch(args)
    precision = "fp32" if args.dry_run else "bf16"
    steps = str(args.steps)
    common = ["--precision", precision, "--batch-size", str(batch), "--steps", steps,
              "--save-every", str(args.steps // 2), "--keep-checkpoints", "0"]  # fmt: skip
    device_path = ["--gpu-decode", "--hflip", "--accum-steps", "2"]
    runs = {
        "eager + eval": [*common, "--val-data", args.val],
        "gpu-decode hflip accum 2": [*common, *device_path],
        "compile": [*common, "--compile"],
    }
    jitter = ["--color-jitter", "0.4", "0.4", "0.4", "0.1", "--grayscale", "0.2"]
    runs["self-distill colour jitter"] = [*common, *jitter, "--self-distill-from", "0.5"]
    runs["naflex + eval"] = [*common, "--naflex", "--max-patches", "256", "--val-data", args.val]
    if args.dry_run:  # one process for the paths a CPU can run: the suite's time is short
        runs = {"eager + eval + gpu-decode hflip accum 2": [*common, "--val-data", args.val,
                                                              *device_path]}  # fmt: skip
        say("SKIP", "train self-distill colour jitter", "GPU run only: the suite has it on CPU")
        say("SKIP", "train naflex + eval", "GPU run only: the suite has it on CPU")
    for name, extra in runs.items():
        summary = train(args, args.work / f"train_{name.replace(' ', '_')}", *extra)
        say("PASS", f"train {name}", figures(summary, batch, peak))
    if args.dry_run:
        say("SKIP", "train resume", "on the CPU fsdp_dcp resumes already; GPU run only")
        say("SKIP", "train vs open_clip_train", "benchmarks/bench_trainer.py: GPU run only")
        say("SKIP", "towers", "benchmarks/bench_trainer.py --sections towers: GPU run only")
        return
    out = args.work / "train_resume"
    train(args, out, *common, "--exit-after", str(args.steps // 2))
    summary = train(args, out, *common, "--resume", "latest")
    say("PASS", "train resume", figures(summary, batch, peak))
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_trainer.py"), "--models", args.model,
           "--batch-size", str(batch), "--precision", "bf16", "--sections", "train",
           "--rounds", "1", "--steps", "40", "--warmup-steps", "10",
           "--workdir", str(args.work / "bench")]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    lines = [line for line in result.stdout.splitlines() if line.startswith("  ")]
    say("PASS" if result.returncode == 0 else "FAIL", "train vs open_clip_train", " | ".join(
        line.strip() for line in lines) or result.stderr[-500:])  # fmt: skip
    cmd = [*cmd[:cmd.index("--sections") + 1], "towers", "--rounds", "1", "--steps", "20",
           "--warmup-steps", "5", "--workdir", str(args.work / "bench")]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    lines = [line for line in result.stdout.splitlines() if line.startswith(("|", "teacher"))]
    say("PASS" if result.returncode == 0 else "FAIL", "towers", " ".join(
        line.strip() for line in lines[2:]) or result.stderr[-500:])  # fmt: skip


def main(argv=None) -> int:
    args = parse_args(argv)
    cuda = torch.cuda.is_available() and not args.dry_run
    if not cuda and not args.dry_run:
        print("FAIL env: no CUDA device (use --dry-run on a CPU machine)")
        return 1
    device = torch.device("cuda" if cuda else "cpu")
    args.model = args.model or ("tiny-clip" if args.dry_run else "ViT-B-16")
    args.small_batch, args.short_steps = (8, 4) if args.dry_run else (64, 20)
    args.steps = 4 if args.dry_run else 40
    args.work = Path(args.out).resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    where = torch.cuda.get_device_name() if cuda else f"CPU ({os.cpu_count()} cores), dry run"
    print(f"gpu_check on {where}: torch {torch.__version__}, model {args.model}", flush=True)
    from trainer_shards import make_shards

    shards = args.work / "shards"
    n_shards, per_shard = (2, 40) if args.dry_run else (8, 1000)
    if not (shards / "sizes.json").exists():
        make_shards(shards, n_shards, per_shard, image_size=64 if args.dry_run else 256)
    args.shards = str(shards / f"{{00000..{n_shards - 1:05d}}}.tar")
    args.val = str(shards / "00000.tar")
    for name in args.only.split(","):
        try:
            globals()[f"check_{name}"](device, args)
        except Exception as error:  # noqa: BLE001 - one line per check, the next one runs
            traceback.print_exc(file=sys.stderr)
            say("FAIL", name, f"{type(error).__name__}: {error}")
    failed = [name for status, name in RESULTS if status == "FAIL"]
    print(
        f"gpu_check: {sum(s == 'PASS' for s, _ in RESULTS)} passed, {len(failed)} failed "
        f"{failed or ''}, {sum(s == 'SKIP' for s, _ in RESULTS)} skipped in "
        f"{time.perf_counter() - started:.0f} s",
        flush=True,
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
