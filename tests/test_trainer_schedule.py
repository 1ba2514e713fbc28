"""--lr-scheduler cosine | const | const-cooldown, and a cooldown branched from a const run's
checkpoint (several scaling-law points from one run)."""

from __future__ import annotations

import json
import math

import pytest
from trainer_shards import make_shards

from trainer import train

pytest.importorskip("open_clip")
pytest.importorskip("skimage")


def factors(*flags: str, steps: int = 10) -> list[float]:
    args = train.parse_args(["--train-data", "x", "--lr", "0.5", "--warmup", "2", *flags])
    factor = train.lr_factor(args, steps)
    return [factor(step) for step in range(steps)]


def test_shapes_by_hand():
    assert factors("--lr-scheduler", "const") == [0.5, 1, 1, 1, 1, 1, 1, 1, 1, 1]
    cooldown = factors("--lr-scheduler", "const-cooldown", "--cooldown-steps", "4")
    assert cooldown == [0.5, 1, 1, 1, 1, 1, 1, 0.75, 0.5, 0.25]  # linear over the last 4
    ended = factors(
        "--lr-scheduler", "const-cooldown", "--cooldown-steps", "4",
        "--lr-cooldown-end", "0.1", "--lr-cooldown-power", "2",
    )  # fmt: skip
    assert ended[6:] == pytest.approx([1, 0.2 + 0.8 * 0.5625, 0.2 + 0.8 * 0.25, 0.2 + 0.8 * 0.0625])
    cosine = factors("--min-lr", "0.05")
    assert cosine[:2] == [0.5, 1] and cosine[-1] == pytest.approx(
        0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 7 / 8))
    )


def test_cooldown_flags_that_cannot_work(capsys):
    for flags, message in (
        (["--lr-scheduler", "const-cooldown"], "needs --cooldown-steps"),
        (["--cooldown-steps", "3"], "is the decay of --lr-scheduler const-cooldown"),
    ):
        with pytest.raises(SystemExit):
            train.parse_args(["--train-data", "x", *flags])
        assert message in capsys.readouterr().err


def test_a_cooldown_branched_from_a_const_run(tmp_path):
    """A const run saves at step 4; a branch resumes that checkpoint into its own folder with a
    4-step cooldown: its lr falls linearly to 0 while the const run's stays, and its first step
    trains on what the const run's step 5 did (same data position)."""
    make_shards(tmp_path / "shards", num_shards=1, per_shard=48)
    common = [
        "--train-data", str(tmp_path / "shards"), "--model", "tiny-clip", "--batch-size", "8",
        "--warmup", "2", "--lr", "1e-3", "--precision", "fp32", "--workers", "0",
        "--log-every", "1", "--record-samples",
    ]  # fmt: skip
    const = tmp_path / "const"
    train.main([*common, "--steps", "6", "--lr-scheduler", "const", "--save-every", "4",
                "--output-dir", str(const)])  # fmt: skip
    branch = tmp_path / "branch"
    train.main([*common, "--steps", "8", "--lr-scheduler", "const-cooldown", "--cooldown-steps",
                "4", "--resume", str(const / "checkpoints" / "step_00000004.pt"),
                "--output-dir", str(branch)])  # fmt: skip

    def lrs(out):
        rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        return {r["step"]: r["lr"] for r in rows if "lr" in r}

    assert lrs(const) == pytest.approx({s: 1e-3 for s in range(1, 7)})
    # logged after the step: the lr of the next one
    assert lrs(branch) == pytest.approx({5: 7.5e-4, 6: 5e-4, 7: 2.5e-4, 8: 0.0})

    def keys(out, step):
        lines = (out / "samples_rank0.txt").read_text().splitlines()
        return [line.split("\t")[1] for line in lines if line.startswith(f"{step}\t")]

    assert keys(branch, 5) == keys(const, 5) and keys(branch, 6) == keys(const, 6)
