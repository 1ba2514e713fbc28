"""The non-finite guard: a step whose loss or gradient norm is not finite is skipped on the
device and counted; --max-nonfinite in a row stop the run with no new checkpoint.

The NaN is planted by wrapping `train.micro_batch` (the images of chosen steps become NaN):
a fault injected into the real loop, which runs in this process (one rank, no workers)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from trainer_shards import make_shards

from trainer import train

pytest.importorskip("open_clip")
pytest.importorskip("skimage")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("nonfinite")
    make_shards(root / "shards", num_shards=1, per_shard=48)
    return root / "shards"


def plant_nan(monkeypatch, steps: set[int]) -> None:
    real, calls = train.micro_batch, [0]

    def micro_batch(batch, transform, host, device, *rest):
        calls[0] += 1
        images, tokens, on_device = real(batch, transform, host, device, *rest)
        if calls[0] in steps:
            images = images * float("nan")
        return images, tokens, on_device

    monkeypatch.setattr(train, "micro_batch", micro_batch)


def argv(shards, out, *extra) -> list[str]:
    return [
        "--train-data", str(shards), "--model", "tiny-clip", "--batch-size", "8",
        "--steps", "5", "--warmup", "1", "--lr", "1e-3", "--precision", "fp32",
        "--workers", "0", "--log-every", "1", "--save-every", "1", "--keep-checkpoints", "0",
        "--output-dir", str(out), *extra,
    ]  # fmt: skip


def checkpoint(out, step: int) -> dict:
    return torch.load(out / "checkpoints" / f"step_{step:08d}.pt", weights_only=False)


def test_a_planted_nan_batch_is_skipped_and_counted(shards, tmp_path, monkeypatch):
    plant_nan(monkeypatch, {3})
    out = tmp_path / "run"
    summary = train.main(argv(shards, out))
    assert summary["nonfinite_steps"] == 1 and summary["steps"] == 5
    before, skipped, after = (checkpoint(out, s) for s in (2, 3, 4))
    for name, value in before["model"].items():
        assert torch.equal(skipped["model"][name], value), name  # no update, no weight decay
    assert any(not torch.equal(after["model"][n], v) for n, v in skipped["model"].items())
    steps = [s["step"].item() for s in skipped["optimizer"]["state"].values()]
    assert set(steps) == {2.0}  # AdamW's step count did not move either
    for step in range(1, 6):
        weights = checkpoint(out, step)["model"].values()
        assert all(torch.isfinite(w).all() for w in weights if w.is_floating_point())
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["nonfinite_steps"] for r in rows] == [0, 0, 1, 1, 1]
    assert [r["step"] for r in rows if r["loss"] is None] == [3]  # no finite step to average
    assert all(math.isfinite(r["loss"]) for r in rows if r["step"] != 3)


def test_too_many_in_a_row_stop_without_a_new_checkpoint(shards, tmp_path, monkeypatch, capsys):
    plant_nan(monkeypatch, {3, 4, 5})
    out = tmp_path / "run"
    assert train.cli(argv(shards, out, "--max-nonfinite", "2")) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "step 4: 2 steps in a row had a non-finite" in err[0]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        f"step_{s:08d}.pt" for s in (1, 2, 3)
    ]
    for name, value in checkpoint(out, 2)["model"].items():
        assert torch.equal(checkpoint(out, 3)["model"][name], value)


def test_the_fused_adamw_skips_on_the_device():
    """The GPU path on the CPU: a fused AdamW given a NaN gradient leaves the parameters, its
    moments and its step count as they were, with no host sync (step_syncs tests the latter)."""
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, fused=True)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    model(torch.ones(2, 4)).sum().backward()
    assert train.optimizer_step(model, optimizer, scaler, 1.0).item() == 0.0
    before = {k: v.clone() for k, v in model.state_dict().items()}
    moments = [s["exp_avg"].clone() for s in optimizer.state.values()]
    optimizer.zero_grad()
    loss = (model(torch.ones(2, 4)) * float("nan")).sum()
    loss.backward()
    assert train.optimizer_step(model, optimizer, scaler, 1.0, loss=loss.detach()).item() == 1.0
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    assert all(torch.equal(s["exp_avg"], m) for s, m in zip(optimizer.state.values(), moments))
    assert {s["step"].item() for s in optimizer.state.values()} == {1.0}


def test_a_burst_between_two_checks_still_stops_the_run(shards, tmp_path, monkeypatch, capsys):
    """Three NaN steps in a row, then good ones, all between two log lines: the check at the
    next log line sees the burst."""
    plant_nan(monkeypatch, {1, 2, 3})
    out = tmp_path / "run"
    argv_ = argv(shards, out, "--max-nonfinite", "3", "--log-every", "5", "--save-every", "100")
    assert train.cli(argv_) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "step 5: 3 steps in a row" in err[0]
    assert not (out / "checkpoints").exists() or not any((out / "checkpoints").iterdir())


def test_fp16_overflow_is_the_scalers_not_a_nonfinite_step():
    """Under fp16 an overflowing gradient is GradScaler's routine: it skips and halves its
    scale, and the guard does not count it; a non-finite loss is counted."""
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    loss = model(torch.ones(2, 4)).sum()
    scaler.scale(loss).backward()
    model.weight.grad[0, 0] = float("inf")
    before = model.weight.detach().clone()
    assert train.optimizer_step(model, optimizer, scaler, 1.0, loss=loss.detach()).item() == 0.0
    assert torch.equal(model.weight, before) and scaler.get_scale() == 2.0**15
    optimizer.zero_grad()
    nan_loss = model(torch.ones(2, 4)).sum() * float("nan")
    scaler.scale(nan_loss).backward()
    assert train.optimizer_step(model, optimizer, scaler, 1.0, loss=nan_loss.detach()).item() == 1


def test_the_count_carries_over_a_resume(shards, tmp_path, monkeypatch):
    plant_nan(monkeypatch, {2})
    out = tmp_path / "run"
    assert train.main(argv(shards, out, "--exit-after", "3"))["nonfinite_steps"] == 1
    monkeypatch.undo()  # the real micro_batch again
    summary = train.main(argv(shards, out, "--resume", "latest"))
    assert summary["steps"] == 5 and summary["nonfinite_steps"] == 1
