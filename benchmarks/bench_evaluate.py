"""trainer.evaluate against CLIP_benchmark on the same folders and the same model.

Builds the digits set (`python -m trainer.datasets digits`), trains tiny-clip on its training
shards (or takes --checkpoint), exports it as an open_clip local-dir folder, then evaluates
zero-shot classification and retrieval with `python -m trainer.evaluate` and with CLIP_benchmark's
own CLI (`clip_benchmark eval --dataset wds/... --model local-dir:...`), installed here into a
scratch folder from the package index with numpy pinned below 2.4 (its accuracy() calls float()
on a 1-element array, which numpy 2.4 refuses). Prints both tools' numbers, the difference in
points and the wall time of each; also runs CLIP_benchmark once under this environment's numpy
to show whether that failure is still there.

    python benchmarks/bench_evaluate.py [--checkpoint CKPT] [--steps 200] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
CLIP_BENCHMARK = "clip_benchmark==1.6.2"


def run(cmd, env=None, check=True) -> tuple[float, subprocess.CompletedProcess]:
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        sys.exit(f"failed: {' '.join(map(str, cmd))}\n{proc.stdout[-2000:]}{proc.stderr[-3000:]}")
    return time.perf_counter() - started, proc


def install_clip_benchmark(target: Path, numpy_pin: str | None) -> bool:
    pkgs = [CLIP_BENCHMARK, "pycocoevalcap"] + ([f"numpy{numpy_pin}"] if numpy_pin else [])
    cmd = [PY, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), *pkgs]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"could not install {CLIP_BENCHMARK}: {proc.stderr.strip()[-500:]}")
    return proc.returncode == 0


def clip_benchmark(scratch: Path, dataset: Path, model_dir: Path, task: str, out: Path):
    env = dict(os.environ, PYTHONPATH=str(scratch), HF_HUB_OFFLINE="1")
    cmd = [PY, "-m", "clip_benchmark.cli", "eval", "--dataset", f"wds/{dataset.name}"]
    cmd += ["--dataset_root", str(dataset), "--model", f"local-dir:{model_dir}"]
    cmd += ["--pretrained", "", "--task", task, "--no_amp", "--num_workers", "0"]
    cmd += ["--recall_k", "1", "5", "10", "--output", str(out)]
    seconds, proc = run(cmd, env=env, check=False)
    if proc.returncode != 0:
        return seconds, proc.stderr.strip().splitlines()[-1]
    return seconds, json.loads(out.read_text())["metrics"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", help="a trainer checkpoint (default: train tiny-clip here)")
    p.add_argument("--steps", type=int, default=200, help="training steps when training here")
    p.add_argument("--keep", help="work folder to keep (default: a temporary one)")
    args = p.parse_args()
    work = Path(args.keep or tempfile.mkdtemp(prefix="bench_evaluate_"))
    work.mkdir(parents=True, exist_ok=True)
    digits = work / "digits"
    run([PY, "-m", "trainer.datasets", "digits", str(digits)])
    checkpoint = args.checkpoint
    if checkpoint is None:
        train = [PY, "trainer/train.py", "--train-data", str(digits / "train")]
        train += ["--model", "tiny-clip", "--batch-size", "64", "--steps", str(args.steps)]
        train += ["--warmup", "20", "--lr", "2e-3", "--precision", "fp32", "--workers", "1"]
        train += ["--output-dir", str(work / "run"), "--save-every", str(args.steps)]
        seconds, _ = run(train)
        checkpoint = str(work / "run" / "checkpoints" / f"step_{args.steps:08d}.pt")
        print(f"trained tiny-clip for {args.steps} steps on {digits / 'train'} in {seconds:.0f} s")
    model_dir = work / "exported"
    run([PY, "-m", "trainer.export", checkpoint, str(model_dir)])

    scratch = work / "clip_benchmark_env"
    if not install_clip_benchmark(scratch, "<2.4"):
        sys.exit(0)
    rows = []
    for dataset, task, cb_task in (
        (digits / "zeroshot", "zeroshot_classification", "zeroshot_classification"),
        (digits / "retrieval", "retrieval", "zeroshot_retrieval"),
    ):
        ours_out = work / f"ours_{task}.json"
        cmd = [PY, "-m", "trainer.evaluate", "--model-dir", str(model_dir), "--task", task]
        cmd += ["--dataset", str(dataset), "--output", str(ours_out)]
        ours_s, _ = run(cmd)
        result = json.loads(ours_out.read_text())["metrics"]
        ours = result["en"] if task != "retrieval" else result["all"]
        theirs_s, theirs = clip_benchmark(scratch, dataset, model_dir, cb_task, work / "cb.json")
        if isinstance(theirs, str):
            sys.exit(f"CLIP_benchmark failed on {dataset}: {theirs}")
        for metric, value in theirs.items():
            if metric in ours:
                rows.append((dataset.name, metric, ours[metric], value, ours_s, theirs_s))
    print(f"\n{CLIP_BENCHMARK} (numpy<2.4, scratch env) vs trainer.evaluate on {model_dir}:")
    print(f"{'set':<10} {'metric':<28} {'ours':>8} {'CLIP_b.':>8} {'diff pts':>9}")
    worst = 0.0
    for name, metric, ours, theirs, _, _ in rows:
        diff = 100 * (ours - theirs)
        worst = max(worst, abs(diff))
        print(f"{name:<10} {metric:<28} {ours:8.4f} {theirs:8.4f} {diff:+9.3f}")
    times = {name: (o, t) for name, _, _, _, o, t in rows}
    for name, (o, t) in times.items():
        print(f"wall time {name}: ours {o:.1f} s, CLIP_benchmark {t:.1f} s ({t / o:.2f}x ours)")
    print(f"largest difference: {worst:.3f} points (acceptance: <= 0.5)")

    unpinned = work / "clip_benchmark_env_numpy_here"
    import numpy

    if install_clip_benchmark(unpinned, None):
        _, theirs = clip_benchmark(
            unpinned, digits / "zeroshot", model_dir, "zeroshot_classification", work / "x.json"
        )
        state = "ran" if isinstance(theirs, dict) else f"failed: {theirs}"
        print(f"CLIP_benchmark under numpy {numpy.__version__} (this environment): {state}")
    if worst > 0.5:
        sys.exit(1)


if __name__ == "__main__":
    main()
