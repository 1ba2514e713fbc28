"""Two gloo ranks under torchrun train a tiny open_clip model on real-image shards."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from trainer_shards import make_shards

pytest.importorskip("open_clip")
pytest.importorskip("skimage")

ROOT = Path(__file__).resolve().parents[1]
STEPS = 20


def run_shards(root: Path) -> Path:
    """4 train shards of 100 (with broken samples) and a held-out shard of 64."""
    make_shards(root / "train", num_shards=4, per_shard=100, broken=True)
    make_shards(root / "val", num_shards=1, per_shard=64, seed=1, first_index=100)
    return root


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return run_shards(tmp_path_factory.mktemp("trainer_shards"))


def torchrun(shards: Path, out: Path, *extra: str, ranks: int = 2) -> subprocess.CompletedProcess:
    cmd = torchrun_command(shards, out, *extra, ranks=ranks)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def torchrun_command(shards: Path, out: Path, *extra: str, ranks: int = 2) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={ranks}",
        "--standalone",
        str(ROOT / "trainer" / "train.py"),
        "--train-data", str(shards / "train" / "{00000..00003}.tar"),
        "--val-data", str(shards / "val" / "00100.tar"),
        "--model", "tiny-clip",
        "--batch-size", "8",
        "--steps", str(STEPS),
        "--lr", "1e-3",
        "--warmup", "2",
        "--precision", "fp32",
        "--workers", "1",
        "--shuffle-buffer", "20",  # 160 drawn + 19 buffered < the 200 of a rank's pass
        "--log-every", "1",
        "--save-every", "10",
        "--keep-checkpoints", "0",
        "--record-samples",
        "--output-dir", str(out),
        *extra,
    ]  # fmt: skip


def losses(out: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: row["loss"] for row in rows if "loss" in row}  # not the eval rows


def trained_keys(out: Path, rank: int) -> list[str]:
    lines = (out / f"samples_rank{rank}.txt").read_text().splitlines()
    return [line.split("\t")[1] for line in lines]


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    path = out / "checkpoints" / f"step_{STEPS:08d}.pt"
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


@pytest.fixture(scope="module")
def uninterrupted(shards, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run_full")
    torchrun(shards, out)
    return out


def test_ddp_run_learns_on_disjoint_samples(uninterrupted):
    curve = losses(uninterrupted)
    assert sorted(curve) == list(range(1, STEPS + 1))
    first, last = sum(curve[s] for s in range(1, 6)) / 5, sum(curve[s] for s in range(16, 21)) / 5
    assert last < first * 0.8, curve

    rank0, rank1 = trained_keys(uninterrupted, 0), trained_keys(uninterrupted, 1)
    assert len(rank0) == len(rank1) == STEPS * 8
    assert len(set(rank0)) == len(rank0) and len(set(rank1)) == len(rank1)
    assert not set(rank0) & set(rank1)

    summary = json.loads((uninterrupted / "summary.json").read_text())
    assert summary["steps"] == STEPS
    assert summary["retrieval"]["pairs"] == 64
    assert 0.0 <= summary["retrieval"]["image_to_text_R@1"] <= 1.0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(uninterrupted / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == list(range(1, STEPS + 1))
    assert len(events.Scalars("val/image_to_text_R@1")) == 1


@pytest.fixture(scope="module")
def preempted(shards, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """The same 2-rank run stopped after step 10; each test resumes a copy of it."""
    out = tmp_path_factory.mktemp("run_preempted")
    return out, torchrun(shards, out, "--exit-after", "10")


def resumable_copy(preempted, tmp_path: Path) -> Path:
    shutil.copytree(preempted[0], tmp_path, dirs_exist_ok=True)
    return tmp_path


def test_resume_mid_epoch_matches_uninterrupted_run(shards, uninterrupted, preempted, tmp_path):
    first = preempted[1]
    assert "stopping after step 10" in first.stdout
    resumable_copy(preempted, tmp_path)
    assert not (tmp_path / "checkpoints" / f"step_{STEPS:08d}.pt").exists()
    # a write that a kill interrupted leaves a temp file that must be ignored
    (tmp_path / "checkpoints" / ".step_00000015.pt.tmp.123").write_bytes(b"partial")

    second = torchrun(shards, tmp_path, "--resume", "latest")
    assert "resumed from" in second.stdout and "step_00000010.pt" in second.stdout

    assert losses(tmp_path) == losses(uninterrupted)
    for rank in (0, 1):
        assert trained_keys(tmp_path, rank) == trained_keys(uninterrupted, rank)
    expected, got = final_weights(uninterrupted), final_weights(tmp_path)
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), name


def test_elastic_resume_on_one_rank_continues_the_pass(shards, preempted, tmp_path):
    """A 2-rank run preempted at step 10 comes back on 1 rank: the checkpoint is accepted, the
    log says what is approximated, and no sample of the pass is trained on twice."""
    resumable_copy(preempted, tmp_path)
    before = trained_keys(tmp_path, 0) + trained_keys(tmp_path, 1)
    second = torchrun(shards, tmp_path, "--resume", "latest", ranks=1)
    assert "elastic resume (2 -> 1 data streams)" in second.stdout
    assert "samples that were in shuffle buffers are skipped" in second.stdout
    after = trained_keys(tmp_path, 0)[len(before) // 2 :]  # rank 0's file gets the new lines
    assert len(after) == 10 * 8
    assert len(set(after)) == len(after)
    assert not set(after) & set(before)
    assert sorted(losses(tmp_path)) == list(range(1, STEPS + 1))


def test_compiled_ddp_with_checkpointing_and_accumulation(shards, tmp_path):
    """--compile (dynamo + AOT autograd; aot_eager skips C++ code generation on CPU) with DDP,
    gradient checkpointing and feature-cache accumulation on 2 gloo ranks."""
    result = torchrun(
        shards, tmp_path, "--compile", "--compile-backend", "aot_eager", "--grad-checkpointing",
        "--accum-steps", "2", "--steps", "4", "--save-every", "4",
    )  # fmt: skip
    assert "global batch 32 (8 x 2 rank(s) x 2 micro-batch(es)" in result.stdout
    curve = losses(tmp_path)
    assert sorted(curve) == [1, 2, 3, 4] and all(math.isfinite(v) for v in curve.values())


def test_a_rank_killed_mid_run_restarts_from_the_newest_checkpoint(shards, uninterrupted, tmp_path):
    """`torchrun --max-restarts 1` with `--resume latest`: SIGKILL of rank 1 after step 12 makes
    torchrun restart both ranks; they rejoin (a store prefix per restart: distributed.py), resume
    from step 10's checkpoint (the newest complete one) and train, from there on, on exactly the
    samples of an uninterrupted run, to the same losses and the same final weights. What rank
    1 trained on before it was killed is in its --record-samples file (flushed every step)."""
    import re
    import signal
    import threading

    import psutil

    cmd = torchrun_command(shards, tmp_path, "--resume", "latest")
    cmd[3:3] = ["--max-restarts", "1", "--monitor-interval", "0.5"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    watchdog = threading.Timer(300, process.kill)  # a hung restart fails, not blocks, the suite
    watchdog.start()
    lines, killed = [], None
    for line in process.stdout:
        lines.append(line)
        step = re.match(r"step (\d+)/", line)
        if killed is None and step and int(step.group(1)) >= 12:
            ranks = [  # torchrun's own children: the ranks, not their loader workers
                p for p in psutil.Process(process.pid).children()
                if p.environ().get("RANK") == "1" and "train.py" in " ".join(p.cmdline())
            ]  # fmt: skip
            assert ranks, "rank 1 not found"
            ranks[0].send_signal(signal.SIGKILL)
            killed = ranks[0].pid
    output = "".join(lines)
    returncode = process.wait()
    watchdog.cancel()
    assert returncode == 0, output[-3000:]
    assert killed is not None, output[-3000:]
    after = output[output.index("step 12/") :]
    assert "resumed from" in after and "step_00000010.pt" in after, output[-3000:]

    assert losses(tmp_path) == losses(uninterrupted)  # the last line of each step counts
    for rank in (0, 1):
        lines = (tmp_path / f"samples_rank{rank}.txt").read_text().splitlines()
        by_step: dict[int, list[str]] = {}
        for step, key in (line.split("\t") for line in lines):
            if int(step) in by_step and key == by_step[int(step)][0]:
                by_step[int(step)] = []  # the step trained again after the restart
            by_step.setdefault(int(step), []).append(key)
        again = [key for step in sorted(by_step) for key in by_step[step]]
        assert again == trained_keys(uninterrupted, rank)
    expected, got = final_weights(uninterrupted), final_weights(tmp_path)
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
