"""A damaged newest checkpoint (issue 36, case 7): `--resume latest` passes over it with one
warning and resumes from the one before; the tools that read a checkpoint say which file in one
line, and nothing is ever loaded with weights_only=False."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from trainer import checkpoint

ROOT = Path(__file__).resolve().parents[1]


def write_checkpoints(directory: Path) -> tuple[Path, Path]:
    """step 10 complete, step 20 cut short as a full disk would leave it."""
    good = checkpoint.save({"step": 10, "model": {"w": torch.ones(64, 64)}}, directory, 10)
    newest = checkpoint.save({"step": 20, "model": {"w": torch.zeros(64, 64)}}, directory, 20)
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])
    return good, newest


def test_a_truncated_newest_checkpoint_is_passed_over_with_one_warning(tmp_path):
    good, newest = write_checkpoints(tmp_path)
    assert checkpoint.list_checkpoints(tmp_path) == [good, newest]
    with pytest.raises(checkpoint.DamagedCheckpoint, match=r"step_00000020\.pt cannot be read"):
        checkpoint.load(newest)
    warnings = []
    path, state = checkpoint.resolve_and_load("latest", tmp_path, warnings.append)
    assert path == good and state["step"] == 10
    assert torch.equal(state["model"]["w"], torch.ones(64, 64))
    assert len(warnings) == 1 and "step_00000020.pt" in warnings[0]
    assert "weights_only" not in warnings[0]
    # named explicitly, the damaged file is an error, not a silent fallback
    with pytest.raises(checkpoint.DamagedCheckpoint):
        checkpoint.resolve_and_load(str(newest), tmp_path, warnings.append)
    # every checkpoint unreadable: an error, never a fresh start over them
    good.write_bytes(b"not a checkpoint at all")
    with pytest.raises(checkpoint.DamagedCheckpoint, match="none of the 2 checkpoints"):
        checkpoint.resolve_and_load("latest", tmp_path, warnings.append)
    # an I/O failure that is not damage is not passed over silently
    newest.unlink()
    good.chmod(0)
    if os.access(good, os.R_OK):  # root reads anything: make the file a folder instead
        good.chmod(0o644)
        good.unlink()
        good.mkdir()
    with pytest.raises(OSError):
        checkpoint.load(good)
    assert checkpoint.resolve_and_load("latest", tmp_path / "empty", warnings.append) == (
        None,
        None,
    )


def test_export_and_evaluate_name_a_damaged_checkpoint_in_one_line(tmp_path):
    _, newest = write_checkpoints(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "trainer.export", str(newest), str(tmp_path / "exported")],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: checkpoint "), result.stderr[-2000:]
    assert "step_00000020.pt cannot be read" in lines[0] and "weights_only" not in result.stderr
    from trainer import models

    with pytest.raises(ValueError, match=r"step_00000020\.pt cannot be read"):
        models.load_checkpoint_model(newest)  # what trainer.evaluate and --init-from read with


def write_dcp_checkpoints(directory: Path) -> list[Path]:
    """Two DCP folders (steps 10 and 20) of a small model and its AdamW state, written by the
    trainer's own ShardedCheckpointer in this one process (DCP without a process group)."""
    model = torch.nn.Linear(64, 64)
    optimizer = torch.optim.AdamW(model.parameters())
    writer = checkpoint.ShardedCheckpointer(directory, 0, is_main=True, use_async=False)
    paths = []
    for step in (10, 20):
        model(torch.randn(4, 64)).sum().backward()
        optimizer.step()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)
            paths.append(writer.save(model, optimizer, {"step": step}, step))
    return paths


def test_a_dcp_folder_with_a_short_or_missing_shard_is_passed_over(tmp_path):
    """`load` checks the shards DCP's .metadata points into: a truncated or missing shard, or
    an undecodable .metadata, is a DamagedCheckpoint found before the state is used."""
    good, newest = write_dcp_checkpoints(tmp_path)
    shard = newest / "__0_0.distcp"
    size = shard.stat().st_size
    shard.write_bytes(shard.read_bytes()[: size // 2])
    with pytest.raises(checkpoint.DamagedCheckpoint) as error:
        checkpoint.resolve_and_load(str(newest), tmp_path, print)  # named: one line, no fallback
    assert str(error.value) == (
        f"checkpoint {newest} cannot be read (shard __0_0.distcp: {size // 2} of {size} bytes)"
    )
    said = []
    path, state = checkpoint.resolve_and_load("latest", tmp_path, said.append)
    assert path == good and state == {"step": 10}
    assert len(said) == 1 and "step_00000020.dcp cannot be read (shard __0_0" in said[0]
    model = torch.nn.Linear(64, 64)
    checkpoint.load_sharded(path, model)  # the one passed to loads
    assert not torch.equal(model.weight, torch.nn.Linear(64, 64).weight)

    shard.unlink()  # a lost shard file
    said.clear()
    assert checkpoint.resolve_and_load("latest", tmp_path, said.append)[0] == good
    assert len(said) == 1 and "(shard __0_0.distcp: missing)" in said[0]
    metadata = good / ".metadata"  # and the older one's .metadata cut short: none can be read
    metadata.write_bytes(metadata.read_bytes()[:100])
    with pytest.raises(checkpoint.DamagedCheckpoint, match="none of the 2 checkpoints"):
        checkpoint.resolve_and_load("latest", tmp_path, said.append)
    assert "step_00000010.dcp cannot be read (.metadata: " in said[-1]
