"""Training throughput of trainer/train.py against open_clip_train on the same shards.

Both trainers run the same model, per-rank batch, precision, data loader workers, optimizer
settings and shards (real photographs from scikit-image with CC3M captions, written as
WebDataset shards), one process each, alternating, `--rounds` times. Each round runs every
trainer twice, for `--steps` and for `--warmup-steps` steps; the difference is the cost of the
extra steps with start-up and warm-up cancelled out. Reported per trainer: samples/s from that
wall-time difference (best round), CPU ms per sample from the CPU-time difference of the whole
process tree (median round; robust to other tenants' load on a shared machine), peak memory
(CUDA max_memory_allocated on GPU, the training process's max RSS on CPU) and MFU from the
model's FLOPs per sample (forward + backward, counted with torch.utils.flop_counter).

Two more sections, CPU-only figures measured in the same run:
  loader  images/s per CPU core of the data workers at 224 px on real photographs stored at
          256 px: the previous path (PIL decode + open_clip's train transform, fp32 tensors out)
          against the new one (DCT-scaled JPEG decode, uint8 canvas and crop boxes out; the crop,
          resize and normalisation run on the device), bytes handed over per image, and the
          cores per GPU that ViT-B/16 at 40% MFU on an H100 would need with each.
  resume  time to first batch after resuming at 0, 10 and 100 shards into a pass, against the
          previous trainer's replay (reading every sample since step 0 without decoding).
  online  loader samples/s/core on the same pool shards with and without online balancing.
  towers  per-rank bytes of parameters + gradients + AdamW state and step time of a plain run,
          --lock-image, and distillation from a same-size teacher (its share of the step).
  fsdp    per-rank bytes of parameters + gradients + AdamW state under DDP and --fsdp, measured
          for a tiny model on 2 gloo ranks and computed for ViT-H-14-worldwide (built on the
          meta device: exact parameter counts, no memory) at 8 ranks; the training loop's stall
          per checkpoint: DDP's rank-0 torch.save, --fsdp --sync-checkpoint (DCP, every rank
          writes its shard) and --fsdp (DCP async: staged, written in the background).

    python benchmarks/bench_trainer.py                 # CPU: tiny model, fp32
    python benchmarks/bench_trainer.py --models ViT-B-32,ViT-B-16 --batch-size 256  # GPU, bf16
    python benchmarks/bench_trainer.py --sections loader,resume
    python benchmarks/bench_trainer.py --sections fsdp --fsdp-model tiny-clip-w128
    python benchmarks/bench_trainer.py --sections towers --models tiny-clip-w128
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
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
    p.add_argument(
        "--sections",
        default="loader,resume,train",
        help="any of loader, resume, online, fsdp, towers, train",
    )
    p.add_argument("--loader-images", type=int, default=400, help="images per loader path")
    p.add_argument("--fsdp-model", default="tiny-clip-w128", help="model of the fsdp section")
    p.add_argument("--fsdp-ranks", type=int, default=2, help="gloo ranks of the fsdp section")
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


def run(cmd: list[str], log: Path, threads: int | None) -> tuple[str, float, float]:
    """Output, wall seconds and CPU seconds (user + sys, with the workers it waited for)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    start = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    text = log.read_text()
    if proc.returncode != 0:
        raise SystemExit(f"error: {cmd[:4]} failed, see {log}:\n{text[-2000:]}")
    return text, wall, usage.ru_utime + usage.ru_stime


def ours(args, model, data, n_samples, workdir, tag, steps, extra=()) -> tuple[float, float, float]:
    out_dir = workdir / f"ours_{model}_{tag}"
    cmd = [
        sys.executable, str(ROOT / "trainer" / "train.py"),
        "--train-data", data, "--train-num-samples", str(n_samples),
        "--model", model, "--batch-size", str(args.batch_size), "--steps", str(steps),
        "--precision", args.precision, "--workers", str(args.workers),
        "--lr", "5e-4", "--warmup", "5", "--wd", "0.1", "--grad-clip", "1.0",
        "--log-every", "10", "--save-every", str(10**9), "--keep-checkpoints", "1",
        "--output-dir", str(out_dir), *extra,
    ]  # fmt: skip
    _, wall, cpu = run(cmd, workdir / f"ours_{model}_{tag}_{steps}.log", args.threads)
    summary = json.loads((out_dir / "summary.json").read_text())
    return wall, cpu, summary["peak_memory_gib"]


def theirs(args, model, data, n_samples, workdir, tag, steps) -> tuple[float, float, float]:
    precision = {"fp32": "fp32", "bf16": "amp_bf16"}[args.precision]
    cmd = [
        sys.executable, "-c", OPEN_CLIP_TRAIN, str(ROOT / "trainer" / "model_configs"),
        "--train-data", data, "--dataset-type", "webdataset",
        "--train-num-samples", str(steps * args.batch_size),
        "--model", model, "--batch-size", str(args.batch_size), "--epochs", "1",
        "--precision", precision, "--workers", str(args.workers),
        "--lr", "5e-4", "--warmup", "5", "--wd", "0.1", "--beta1", "0.9", "--beta2", "0.95",
        "--eps", "1e-6", "--grad-clip-norm", "1.0", "--local-loss", "--gather-with-grad",
        "--log-every-n-steps", "10", "--save-frequency", "0", "--report-to", "",
        "--logs", str(workdir / "open_clip_logs"), "--name", f"{model}_{tag}_{steps}_{os.getpid()}",
    ]  # fmt: skip
    text, wall, cpu = run(cmd, workdir / f"open_clip_{model}_{tag}_{steps}.log", args.threads)
    if f"[{steps * args.batch_size}/" not in text:
        raise SystemExit(f"error: open_clip_train did not reach step {steps}, see its log")
    return wall, cpu, float(re.search(r"BENCH_PEAK_GIB ([\d.]+)", text).group(1))


def peak_tflops(args) -> float | None:
    if args.peak_tflops:
        return args.peak_tflops
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    return None


def _cpu_seconds(fn) -> tuple[float, object]:
    start = time.process_time()
    result = fn()
    return time.process_time() - start, result


def bench_loader(args, workdir: Path) -> None:
    """Data-worker CPU time per image, previous path vs new, on the same samples read from tar."""
    from collections import Counter

    import open_clip
    from PIL import Image

    from trainer import augment, data

    torch.set_num_threads(1)
    size, stored = 224, 256
    spec, _ = make_data(workdir, args.loader_images, stored, 2)
    samples = [
        s for url in data.expand_urls(spec) for _, s in data.read_shard(url, bool, Counter())
    ]
    samples = samples[: args.loader_images]
    tokenizer = open_clip.get_tokenizer("ViT-B-16")
    old_transform = open_clip.image_transform(size, is_train=True)
    batch = 32

    def old_path():  # PIL decode + open_clip's RandomResizedCrop(bicubic) + ToTensor + Normalize
        out = []
        for i in range(0, len(samples), batch):
            chunk = samples[i : i + batch]
            images = [old_transform(Image.open(io.BytesIO(s["jpg"])).convert("RGB")) for s in chunk]
            out.append((torch.stack(images), tokenizer([data.caption(s) for s in chunk])))
        return out

    def new_path(gpu_decode: bool):
        out = []
        for i in range(0, len(samples), batch):
            chunk = samples[i : i + batch]
            if gpu_decode:
                images = [data.jpeg_for_device(s["jpg"]) for s in chunk]
            else:
                images = [data.decode_image(s["jpg"], 2 * size) for s in chunk]
            texts = [data.caption(s) for s in chunk]
            out.append(data.make_batch(images, texts, tokenizer, i, True, False, gpu_decode))
        return out

    results = {}
    for name, fn in (
        ("previous", old_path),
        ("new", lambda: new_path(False)),
        ("new --gpu-decode", lambda: new_path(True)),
    ):
        best = min(_cpu_seconds(fn)[0] for _ in range(3))
        results[name] = len(samples) / best
    old_batches, new_batches = old_path()[:1], new_path(False)
    old_bytes = old_batches[0][0].element_size() * old_batches[0][0][0].numel()
    new_bytes = sum(b["pixels"].numel() for b in new_batches) / len(samples)
    transform = augment.DeviceTransform(
        size, open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD, torch.device("cpu")
    )
    device_cpu, _ = _cpu_seconds(lambda: [transform(b) for b in new_batches])
    _, flops = model_info("ViT-B-16", 4, "cpu")
    need = 0.40 * PEAK_TFLOPS["H100"] * 1e12 / flops  # images/s for ViT-B/16 at 40% MFU
    print(
        f"== loader: {len(samples)} real photographs stored at {stored} px -> {size} px, "
        f"batches of {batch}, 1 thread, CPU time (best of 3)"
    )
    for name, rate in results.items():
        print(
            f"  {name:18s} {rate:8.0f} images/s/core  {rate / results['previous']:5.2f}x previous"
            f"  -> {need / rate:5.1f} cores per H100 for ViT-B/16 at 40% MFU"
        )
    print(
        f"  handed over per image: previous {old_bytes / 1e3:.0f} kB (fp32 at {size} px), new "
        f"{new_bytes / 1e3:.0f} kB (uint8 at the stored size); ViT-B/16 fwd+bwd "
        f"{flops / 1e9:.1f} GFLOP/image, 40% MFU on an H100 = {need:.0f} images/s"
    )
    print(
        f"  the device-side crop/resize/normalise costs {1e3 * device_cpu / len(samples):.2f} "
        "ms/image when the 'device' is this CPU (one batched grid_sample on a GPU)"
    )


def bench_resume(args, workdir: Path) -> None:
    """Time to first batch after a resume at 0 / 10 / 100 shards into a pass."""
    import shutil
    from collections import Counter

    import open_clip
    import webdataset as wds

    from trainer import data

    per_shard, shards, batch, buffer = 1000, 110, 32, 1000
    spec, _ = make_data(workdir, per_shard, 64, 1)
    folder = workdir / "resume_shards"
    folder.mkdir(exist_ok=True)
    for i in range(shards):  # copies of one real shard: only positions matter here
        shutil.copyfile(data.expand_urls(spec)[0], folder / f"{i:05d}.tar")
    urls = data.expand_urls(str(folder))
    tokenizer = open_clip.get_tokenizer("ViT-B-16")

    def make(**resume):
        return data.ShardBatches(
            urls, tokenizer, batch, 64, num_workers=0, shuffle_buffer=buffer, **resume
        )

    print(
        f"== resume: {shards} shards x {per_shard} samples, batch {batch}, shuffle buffer "
        f"{buffer}, one data stream; wall time to the first batch"
    )
    for position in (0, 10, 100):
        # reach the position as training would, without decoding (it does not change the state)
        stream = data.SlotStream(urls, 0, 1, 0, False, buffer, data.fresh_slot_state(), Counter())
        samples = iter(stream)
        for _ in range(position * per_shard):
            next(samples)
        slot = {**data.fresh_slot_state(), **stream.state()}
        state = json.loads(
            json.dumps(
                {"batches": 0, "layout_batches": 0, "num_workers": 0, "dropped_before": {},
                 "slots": {"0": slot}}
            )
        )  # fmt: skip
        start = time.perf_counter()
        resumed = data.ResumableLoader(make, 0, state)
        next(resumed)
        ttfb = time.perf_counter() - start
        io_counts = resumed.last_io
        # the previous trainer replayed the stream: every sample since step 0, read, not decoded
        seen = stream.position + len(stream.buffer)
        start = time.perf_counter()
        replayed = 0
        for url in urls:
            if replayed >= seen:
                break
            for _ in wds.tarfile_samples([{"url": url}]):
                replayed += 1
                if replayed >= seen:
                    break
        replay = time.perf_counter() - start
        print(
            f"  {position:3d} shards in: {ttfb:6.3f} s to the first batch (read "
            f"{io_counts.get('read', 0)} samples, skipped {io_counts.get('skipped', 0)} by "
            f"header); the previous replay of the {seen} samples before it: {replay:6.3f} s"
        )


def bench_online(args, workdir: Path) -> None:
    """Loader throughput on the same pool shards with and without online balancing."""
    from collections import Counter

    import open_clip
    import pyarrow as pa
    import pyarrow.parquet as pq
    import webdataset as wds
    from trainer_shards import _crop, _jpeg, captions, source_images

    from curation.curate.online import OnlineCuration
    from trainer import data

    torch.set_num_threads(1)
    n, per_shard = 2000, 500
    texts = captions(2000)
    words = Counter(w for t in texts for w in set(t.lower().split()))
    vocab = sorted(w for w, c in words.items() if c >= 20)  # metadata: the common words
    ids = {w: i for i, w in enumerate(vocab)}
    folder = workdir / "online_pool"
    run_dir = workdir / "online_run"
    if not (folder / "manifest.json").exists():
        import random

        images, rng = source_images(), random.Random(0)
        folder.mkdir(parents=True, exist_ok=True)
        counts = Counter()
        for shard in range(n // per_shard):
            with wds.TarWriter(str(folder / f"{shard:05d}.tar")) as sink:
                for i in range(per_shard):
                    text = texts[(shard * per_shard + i) % len(texts)]
                    entries = sorted({ids[w] for w in text.lower().split() if w in ids})
                    counts.update(entries)
                    candidate = {"text": text, "lang": "en", "entry_ids": entries}
                    meta = {"uid": f"{shard}-{i}", "candidates": json.dumps([candidate])}
                    image = _jpeg(_crop(images[rng.randrange(len(images))], rng, 256))
                    sink.write({"__key__": f"{shard:05d}{i:04d}", "jpg": image, "txt": text,
                                "json": json.dumps(meta)})  # fmt: skip
        sizes = {f"{s:05d}.tar": per_shard for s in range(n // per_shard)}
        (folder / "sizes.json").write_text(json.dumps(sizes))
        (folder / "manifest.json").write_text(json.dumps({"total_samples": n}))
        # the run dir a curation job would have written for these records: its entry_counts
        (run_dir / "entry_counts" / "lang=en").mkdir(parents=True, exist_ok=True)
        entry_ids = sorted(counts)
        table = pa.table(
            {
                "entry_id": pa.array(entry_ids, pa.int32()),
                "count": pa.array([counts[e] for e in entry_ids], pa.int64()),
            }
        )
        pq.write_table(table, run_dir / "entry_counts" / "lang=en" / "part-0.parquet")
        (run_dir / "run.json").write_text(json.dumps({"config": {"t_en": 100, "seed": 0}}))
    urls = data.expand_urls(str(folder))
    tokenizer = open_clip.get_tokenizer("ViT-B-16")
    online = OnlineCuration(str(run_dir))

    def consume(balancer):
        ds_ = data.ShardBatches(urls, tokenizer, 32, 224, shuffle_buffer=100, online=balancer)
        delivered, state = 0, {}
        for batch, state in ds_:
            delivered += len(batch["tokens"])
            if state["visit"] >= len(urls):  # one pass read
                break
        return delivered, state["position"]  # delivered, drawn from the shuffle buffer

    runs = {"without": [], "with": []}
    for _ in range(5):  # alternating, median of 5 (CPU time)
        for name, balancer in (("without", None), ("with", online)):
            runs[name].append(_cpu_seconds(lambda b=balancer: consume(b)))
    rates = {}
    for name, results in runs.items():
        seconds = statistics.median(r[0] for r in results)
        delivered, drawn = results[0][1]
        rates[name] = (drawn / seconds, delivered / seconds, delivered, drawn)
    print(
        f"== online curation: {n} pool samples at 256 px, one pass, batches of 32, 1 thread, "
        "CPU time (median of 5, alternating)"
    )
    for name, (drawn_rate, rate, delivered, drawn) in rates.items():
        print(
            f"  {name:7s} balancing: {drawn_rate:6.0f} pool samples/s/core drawn, {rate:6.0f} "
            f"delivered ({delivered} of {drawn} drawn kept)"
        )
    w, wo = rates["with"], rates["without"]
    print(
        f"  with / without: {w[0] / wo[0]:.2f}x pool samples/s, {w[1] / wo[1]:.2f}x delivered "
        "samples/s (a skipped sample is read and decided, not decoded)"
    )


def main():
    args = parse_args()
    sections = set(args.sections.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.workdir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        if "loader" in sections:
            bench_loader(args, workdir)
        if "resume" in sections:
            bench_resume(args, workdir)
        if "online" in sections:
            bench_online(args, workdir)
        if "fsdp" in sections:
            bench_fsdp(args, workdir)
        if "towers" in sections:
            bench_towers(args, workdir)
        if "train" in sections:
            bench_train(args, workdir)


def bench_towers(args, workdir: Path) -> None:
    """Per-rank state bytes and step time of a plain run, --lock-image, and distillation from a
    teacher of the same architecture (the teacher's share of the step: the extra time)."""
    import open_clip

    from trainer import models

    model = args.models.split(",")[0]
    models.register_configs()
    teacher = workdir / f"teacher_{model}.bin"
    if not teacher.exists():
        torch.save(open_clip.create_model(model).state_dict(), teacher)
    size, _ = model_info(model, args.batch_size, "cuda" if torch.cuda.is_available() else "cpu")
    data, n = make_data(workdir, max(400, args.batch_size * (args.steps + 2)), size, 4)
    runs = {
        "plain": [],
        "--lock-image": ["--lock-image"],
        "distilled": ["--distill-model", model, "--distill-pretrained", str(teacher)],
    }
    print(f"\ntowers: {model}, batch {args.batch_size}, {args.precision}, one process")
    print("| run | params | grads | AdamW state | ms per step | vs plain |")
    print("|---|---:|---:|---:|---:|---:|")
    per_step = {}
    for name, extra in runs.items():
        tag = "towers_" + name.strip("-").replace("-", "_")
        long, *_ = ours(args, model, data, n, workdir, tag, args.steps, extra)
        summary = json.loads((workdir / f"ours_{model}_{tag}" / "summary.json").read_text())
        short, *_ = ours(args, model, data, n, workdir, tag, args.warmup_steps, extra)
        per_step[name] = (long - short) / (args.steps - args.warmup_steps)
        mib = {k: v / 2**20 for k, v in summary["state_bytes_per_rank"].items()}
        print(
            f"| {name} | {mib['params']:.1f} MiB | {mib['grads']:.1f} MiB | "
            f"{mib['optimizer']:.1f} MiB | {1000 * per_step[name]:.1f} | "
            f"{per_step[name] / per_step['plain']:.2f}x |"
        )
    share = 1 - per_step["plain"] / per_step["distilled"]
    print(f"teacher forward (+ distillation loss) share of a distilled step: {share:.0%}")


GIB = 1024**3


def bench_fsdp(args, workdir: Path) -> None:
    data, n = make_data(workdir, 400, 32, 4)
    runs = {
        "DDP (step_N.pt, rank 0 writes)": [],
        "FSDP, DCP sync": ["--fsdp", "--sync-checkpoint"],
        "FSDP, DCP async": ["--fsdp"],
    }
    print(
        f"\nfsdp: {args.fsdp_model}, {args.fsdp_ranks} gloo ranks, fp32, batch 16 per rank, "
        "checkpoint every 2 steps (8 steps)"
    )
    print("| run | params | grads | AdamW state | total per rank | checkpoint stall (median) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, extra in runs.items():
        out = workdir / f"fsdp_{len(extra)}"
        cmd = [
            sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={args.fsdp_ranks}",
            "--standalone", str(ROOT / "trainer" / "train.py"),
            "--train-data", data, "--train-num-samples", str(n), "--model", args.fsdp_model,
            "--batch-size", "16", "--steps", "8", "--precision", "fp32", "--workers", "1",
            "--save-every", "2", "--keep-checkpoints", "2", "--log-every", "4",
            "--output-dir", str(out), *extra,
        ]  # fmt: skip
        run(cmd, workdir / f"fsdp_{len(extra)}.log", 1)
        summary = json.loads((out / "summary.json").read_text())
        state = summary["state_bytes_per_rank"]
        stall = statistics.median(summary["checkpoint_stall_s"])
        mib = {k: v / 2**20 for k, v in state.items()}
        print(
            f"| {name} | {mib['params']:.2f} MiB | {mib['grads']:.2f} MiB | "
            f"{mib['optimizer']:.2f} MiB | {sum(mib.values()):.2f} MiB | {1000 * stall:.1f} ms |"
        )
    h14_memory(ranks=8)


def h14_memory(ranks: int, model_name: str = "ViT-H-14-worldwide") -> None:
    """Per-rank training state of MetaCLIP 2's model under DDP and FSDP, from exact counts."""
    import open_clip

    from trainer.sharding import embeddings, transformer_blocks

    with torch.device("meta"):
        model = open_clip.create_model(model_name, device="meta")
    total = sum(p.numel() for p in model.parameters())
    units = [*embeddings(model), *transformer_blocks(model)]
    sizes = sorted((sum(p.numel() for p in u.parameters()) for u in units), reverse=True)
    embedding = sizes[0]  # the XLM-V token embedding is the largest unit
    # fp32 parameter + fp32 gradient + two fp32 AdamW moments = 16 bytes per parameter
    ddp = 16 * total
    fsdp = 16 * total / ranks
    # transient under FSDP (bf16): the largest unit's gathered bf16 copy and its unsharded
    # gradient in fp32 before the reduce-scatter, plus the next unit prefetched
    transient = (2 + 4) * sizes[0] + 2 * sizes[1]
    print(
        f"\n{model_name}: {total / 1e9:.3f} B parameters ({embedding / 1e9:.3f} B in the token "
        f"embedding, largest transformer block {sizes[1] / 1e6:.1f} M); per rank at {ranks} "
        "ranks, fp32 AdamW, before activations:"
    )
    print("| | parameters + gradients + AdamW | transient (FSDP: gathered unit) "
          "| gradient sync per step | checkpoint written per rank |")  # fmt: skip
    print("|---|---:|---:|---:|---:|")
    print(
        f"| DDP | {ddp / GIB:.1f} GiB | - | {4 * total / GIB:.1f} GiB fp32 all-reduced "
        f"({4 * embedding / GIB:.1f} GiB of it the embedding) | {12 * total / GIB:.1f} GiB on "
        "rank 0, synchronous |"
    )
    print(
        f"| FSDP | {fsdp / GIB:.1f} GiB | {transient / GIB:.1f} GiB (the embedding, during its "
        f"lookup and its backward) | {4 * total / GIB:.1f} GiB fp32 reduce-scattered, 1/{ranks} "
        f"kept | {12 * total / ranks / GIB:.1f} GiB on every rank, async |"
    )


def bench_train(args, workdir: Path) -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    where = torch.cuda.get_device_name() if device == "cuda" else f"CPU, {os.cpu_count()} cores"
    peak = peak_tflops(args)
    for model in args.models.split(","):
        image_size, flops = model_info(model, args.batch_size, device)
        n = args.steps * args.batch_size
        data, n_samples = make_data(workdir, n, image_size, max(4, args.workers))
        trainers = {"ours": ours, "open_clip_train": theirs}
        results = {name: [] for name in trainers}
        extra_samples = (args.steps - args.warmup_steps) * args.batch_size
        for r in range(args.rounds):
            for name, trainer in trainers.items():
                wall, cpu, mem = trainer(args, model, data, n_samples, workdir, r, args.steps)
                wall_short, cpu_short, _ = trainer(
                    args, model, data, n_samples, workdir, r, args.warmup_steps
                )
                # the extra steps of the long run: start-up and warm-up cancel out
                rate = extra_samples / (wall - wall_short)
                results[name].append((rate, 1e3 * (cpu - cpu_short) / extra_samples, mem))
        print(
            f"== {model} on {where}: batch {args.batch_size}, {args.precision}, "
            f"{args.workers} workers, {args.threads or 'default'} threads; steps "
            f"{args.warmup_steps + 1}-{args.steps} (a {args.steps}-step run minus a "
            f"{args.warmup_steps}-step run), {args.rounds} rounds; "
            f"{flops / 1e9:.3f} GFLOP/sample (fwd+bwd)"
        )
        best = {}
        for name, runs in results.items():
            rate = max(r for r, _, _ in runs)
            cpu_ms = statistics.median(c for _, c, _ in runs)
            mem = max(m for _, _, m in runs)
            best[name] = (rate, cpu_ms)
            mfu = f"{100 * rate * flops / (peak * 1e12):.1f}%" if peak else "n/a"
            print(
                f"  {name:16s} {rate:8.1f} samples/s (best; rounds "
                f"{', '.join(f'{r:.0f}' for r, _, _ in runs)})  "
                f"CPU {cpu_ms:.2f} ms/sample (median; rounds "
                f"{', '.join(f'{c:.2f}' for _, c, _ in runs)})  "
                f"peak mem {mem:.2f} GiB  {rate * flops / 1e9:.1f} GFLOP/s  MFU {mfu}"
            )
        (ours_rate, ours_cpu), (oc_rate, oc_cpu) = best["ours"], best["open_clip_train"]
        print(
            f"  ours / open_clip_train: {ours_rate / oc_rate:.2f}x samples/s, "
            f"{ours_cpu / oc_cpu:.2f}x CPU time per sample"
        )


if __name__ == "__main__":
    main()
