"""`--remote-sync URI`: checkpoints of both kinds kept on an S3-compatible server as they are
written, and a run resumed on a machine that has none of them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from trainer_shards import make_shards

from tests.conftest import PROJECT_ROOT

pytest.importorskip("open_clip")
pytest.importorskip("skimage")


def train(out: Path, shards: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable, str(PROJECT_ROOT / "trainer" / "train.py"),
        "--train-data", str(shards), "--model", "tiny-clip", "--batch-size", "8",
        "--lr", "1e-3", "--warmup", "1", "--precision", "fp32", "--workers", "0",
        "--shuffle-buffer", "8", "--log-every", "1", "--output-dir", str(out), *args,
    ]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.mark.parametrize("kind", ["pt", "dcp"])
def test_checkpoints_go_to_the_store_and_a_new_machine_resumes_from_there(kind, s3, tmp_path):
    """Each checkpoint is uploaded once written (a .dcp folder's markers last), the store keeps
    --keep-checkpoints of them, metrics.jsonl and summary.json follow at the end; a second run
    with an empty output folder fetches the newest and resumes from it (for .dcp: the fetch,
    in this process; that a resume reaches an uninterrupted run's weights is
    test_trainer_ddp's). trainer.evaluate and trainer.export
    load a checkpoint from the store as from local disk."""
    import torch

    shards = tmp_path / "shards"
    make_shards(shards, num_shards=2, per_shard=24)
    remote = s3.uri("train", kind)
    flags = ["--checkpoint-format", kind, "--save-every", "2", "--keep-checkpoints", "2"]
    first = [*flags, "--steps", "8", "--exit-after", "6", "--remote-sync", remote]
    train(tmp_path / "first", shards, *first)  # preempted after step 6
    name = "step_{:08d}." + kind
    keys = s3.keys("train", kind)
    assert "metrics.jsonl" in keys and "summary.json" in keys
    held = sorted({k.split("/")[1] for k in keys if k.startswith("checkpoints/")})
    assert held == [name.format(4), name.format(6)]  # --keep-checkpoints 2 there too
    local = tmp_path / "first" / "checkpoints" / name.format(6)
    if kind == "pt":
        stored = s3.download("train", kind, "checkpoints", name.format(6), to=tmp_path / "x.pt")
        assert stored.read_bytes() == local.read_bytes()
    else:
        files = sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file())
        assert [k.split("/", 2)[2] for k in keys if name.format(6) in k] == files

    from trainer.models import load_checkpoint_model  # what trainer.evaluate / export load

    there = load_checkpoint_model(f"{remote}/checkpoints/{name.format(6)}")[0].state_dict()
    here = load_checkpoint_model(local)[0].state_dict()
    assert all(torch.equal(there[k], here[k]) for k in here) and there.keys() == here.keys()

    if kind == "dcp":  # the fetch a resume makes, without a second run (the .pt case has it)
        from trainer import checkpoint
        from trainer.remote_sync import RemoteSync

        fetched = RemoteSync(remote).fetch_newer(tmp_path / "second" / "checkpoints")
        assert fetched is not None and fetched.name == name.format(6)
        path, state = checkpoint.resolve_and_load("latest", fetched.parent, print)
        assert path == fetched and state["step"] == 6  # complete: its shards all there
        assert RemoteSync(remote).fetch_newer(fetched.parent) is None  # nothing newer there
        return
    resumed = train(
        tmp_path / "second", shards, *flags, "--steps", "8", "--resume", "latest",
        "--remote-sync", remote,
    )  # fmt: skip
    assert f"fetched {name.format(6)} from {remote}" in resumed.stdout
    assert "resumed from" in resumed.stdout
    assert json.loads((tmp_path / "second" / "summary.json").read_text())["steps"] == 8
    assert (tmp_path / "second" / "checkpoints" / name.format(8)).exists()


def test_an_unwritable_remote_is_a_one_line_error_before_training(s3, tmp_path, capsys):
    from trainer.train import cli

    shards = tmp_path / "shards"
    make_shards(shards, num_shards=1, per_shard=16)
    argv = [
        "--train-data", str(shards), "--model", "tiny-clip", "--batch-size", "8", "--steps", "1",
        "--workers", "0", "--output-dir", str(tmp_path / "out"),
        "--remote-sync", "s3://no-such-bucket/run",
    ]  # fmt: skip
    assert cli(argv) == 2
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--remote-sync s3://no-such-bucket/run" in errors[0]
    assert "samples/s" not in captured.out
