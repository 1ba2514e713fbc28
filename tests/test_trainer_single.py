"""`python trainer/train.py` as one process: SigLIP, bf16 autocast, accumulation, checkpointing."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from trainer_shards import make_shards

pytest.importorskip("open_clip")
pytest.importorskip("skimage")

ROOT = Path(__file__).resolve().parents[1]


def train(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "trainer" / "train.py"), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def test_siglip_bf16_accumulation_run(tmp_path):
    make_shards(tmp_path / "shards", num_shards=1, per_shard=60)
    out = tmp_path / "run"
    result = train(
        "--train-data", str(tmp_path / "shards"),
        "--model", "tiny-clip",
        "--loss", "siglip",
        "--precision", "bf16",
        "--accum-steps", "2",
        "--grad-checkpointing",
        "--batch-size", "6",
        "--steps", "4",
        "--warmup", "1",
        "--lr", "1e-3",
        "--workers", "0",
        "--log-every", "1",
        "--output-dir", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "for 4 steps: 60 samples/epoch, global batch 12" in result.stdout

    ckpt = torch.load(out / "checkpoints" / "step_00000004.pt", weights_only=True)
    model = ckpt["model"]
    # learnable temperature and bias moved away from their SigLIP init (log 10, -10)
    assert model["logit_bias"].item() != -10.0
    assert model["logit_scale"].item() != pytest.approx(math.log(10), abs=0)
    decay, no_decay = ckpt["optimizer"]["param_groups"]
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert ckpt["data"][0]["batches"] == 8  # 4 steps x 2 micro-batches
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)


def test_missing_shards_fail_with_one_line(tmp_path, capsys):
    from trainer.train import cli

    assert cli(["--train-data", str(tmp_path / "{00000..00003}.tar"), "--model", "tiny-clip"]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("error: shard ") and "not found" in lines[-1]


def test_device_decode_and_flip_run(tmp_path):
    """--gpu-decode (torchvision.io.decode_jpeg on the CPU here, the same code as on CUDA) with
    --hflip, OpenVision 2's crop scale, colour jitter and greyscale (#31, item 2) and 2 workers;
    the broken JPEG is dropped in the worker by its missing end marker."""
    make_shards(tmp_path / "shards", num_shards=2, per_shard=12, broken=True)
    out = tmp_path / "run"
    result = train(
        "--train-data", str(tmp_path / "shards"),
        "--model", "tiny-clip",
        "--gpu-decode", "--hflip", "--crop-scale", "0.4", "1.0",
        "--color-jitter", "0.4", "0.4", "0.4", "0.1", "--grayscale", "0.2",
        "--batch-size", "8", "--steps", "6", "--warmup", "1", "--lr", "1e-3",
        "--precision", "fp32", "--workers", "2", "--shuffle-buffer", "10",
        "--log-every", "1", "--output-dir", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 6 and all(math.isfinite(x) for x in losses)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dropped"]["bad_image"] >= 1


def test_an_unknown_model_is_one_line_naming_close_names(tmp_path):
    make_shards(tmp_path / "shards", num_shards=1, per_shard=8)
    result = train(
        "--train-data", str(tmp_path / "shards"), "--model", "ViT-B-3",
        "--output-dir", str(tmp_path / "run"),
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert lines[0].startswith("error: unknown --model 'ViT-B-3'; close names: ViT-B-32")
    assert "trainer/model_configs/" in lines[0] and "ViT-bigG-14" not in lines[0]  # not all


def test_a_global_batch_larger_than_the_data_is_one_line(tmp_path, capsys):
    """20 samples (sizes.json): a contrastive batch of more would hold a pair twice, also
    when resampled; the error says both numbers and the largest --batch-size that fits."""
    from trainer.train import cli, global_batch_size, parse_args

    make_shards(tmp_path / "shards", num_shards=1, per_shard=20)
    common = ["--train-data", str(tmp_path / "shards"), "--model", "tiny-clip"]
    common += ["--workers", "0", "--output-dir", str(tmp_path / "run")]
    assert cli(common) == 2  # the default --batch-size 256
    assert cli([*common, "--batch-size", "6", "--accum-steps", "4", "--resampled"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [
        "error: global batch 256 (256 x 1 rank(s) x 1 micro-batch(es)) is larger than the 20 "
        "training samples per epoch, so a batch would repeat pairs; the largest --batch-size "
        "that fits is 20",
        "error: global batch 24 (6 x 1 rank(s) x 4 micro-batch(es)) is larger than the 20 "
        "training samples per epoch, so a batch would repeat pairs; the largest --batch-size "
        "that fits is 5",
    ]
    args = parse_args([*common, "--batch-size", "5", "--accum-steps", "2"])
    assert global_batch_size(args, 20, world_size=2) == 20  # all 20 in one batch: fine
    with pytest.raises(ValueError, match="largest --batch-size that fits is 2$"):
        global_batch_size(args, 19, world_size=4)
    with pytest.raises(ValueError, match="no --batch-size fits"):
        global_batch_size(args, 19, world_size=16)
