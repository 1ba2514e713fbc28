"""SigLIP 2's self-distillation (`--self-distill-from`, trainer/self_distill.py): the EMA
teacher's update, no gradient into it, the masked share, the terms switching on at their step,
accumulation, and resumes that give the uninterrupted run's weights (teacher included) from
DCP folders in one process and .pt files on 2 gloo ranks (DDP). Under --fsdp:
test_trainer_fsdp.py."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("open_clip")
pytest.importorskip("skimage")

from test_trainer_ddp import losses, run_shards, torchrun  # noqa: E402

from trainer import accumulate, models, self_distill, train  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PROTOTYPES = 64


def tiny(seed: int = 0, crops: int = 2, ratio: float = 0.5):
    """tiny-clip (32 px, 4 x 4 patches) with its self-distillation module, in float64."""
    torch.manual_seed(seed)
    model = models.build_model("tiny-clip")
    cfg = self_distill.SelfDistillConfig(
        start_step=0, local_crops=crops, local_size=16, mask_ratio=ratio, prototypes=PROTOTYPES
    )
    model.self_distill = self_distill.SelfDistill(model.visual, cfg)
    return model.double()


def inputs(model, n: int, seed: int = 1, step: int = 0) -> tuple:
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, 32, 32, generator=g, dtype=torch.float64)
    tokens = torch.randint(1, 49000, (n, 32), generator=g)
    crops = model.self_distill.cfg.local_crops
    local = torch.randn(crops * n, 3, 16, 16, generator=g, dtype=torch.float64)
    mask = self_distill.draw_mask(n, 16, model.self_distill.cfg.mask_ratio, (0, step, 0, 0))
    return images, tokens, {"self_distill": {"local": local, **mask}}


def test_ema_update_and_centres_equal_their_formulas():
    model = tiny()
    sd = model.self_distill
    sd.start(model.visual)
    for t, s in sd.pairs(model.visual):
        assert torch.equal(t, s)
    assert bool(sd.started)
    with torch.no_grad():
        for p in [*model.visual.parameters(), *sd.head.parameters()]:
            p.add_(torch.randn_like(p))
    before = [(t.clone(), s.clone()) for t, s in sd.pairs(model.visual)]
    sd.pending[0].fill_(3.0)
    sd.pending[1].fill_(6.0)
    sd.pending_images.fill_(2)
    center = sd.center.clone()
    sd.after_step(model.visual)
    d = sd.cfg.ema_decay
    for (t, s), (t_now, s_now) in zip(before, sd.pairs(model.visual), strict=True):
        torch.testing.assert_close(t_now, d * t + (1 - d) * s, rtol=1e-12, atol=1e-12)
        assert torch.equal(s_now, s)  # the student is not touched
    torch.testing.assert_close(sd.center, 0.9 * center + 0.1 * 1.5)
    torch.testing.assert_close(sd.patch_center, torch.full_like(center, 0.1 * 3.0))
    assert not sd.pending.any() and sd.pending_images.item() == 0


def test_no_gradient_reaches_the_teacher_and_every_student_part_gets_one():
    model = tiny()
    model.self_distill.start(model.visual)
    learner = self_distill.Learner(model)
    images, tokens, host = inputs(model, 4)
    out = learner(images, tokens, **host)
    (out["self_distill_loss"] + 0 * out["image_features"].sum()).backward()
    teacher = model.self_distill.teacher
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    for name, p in [*model.self_distill.named_parameters(), *model.visual.named_parameters()]:
        if name.startswith("teacher.") or name == "proj":  # proj: only the CLIP loss uses it
            continue
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert out["silc_loss"] > 0 and out["tips_loss"] > 0
    torch.testing.assert_close(out["self_distill_loss"], out["silc_loss"] + 0.25 * out["tips_loss"])


def test_exactly_the_drawn_share_of_patches_is_masked():
    mask = self_distill.draw_mask(6, 16, 0.5, (3, 7, 1, 0))
    assert mask["mask"].sum(dim=1).tolist() == [8] * 6
    assert torch.equal(mask["mask"].nonzero()[:, 1].view(6, 8), mask["positions"])
    again = self_distill.draw_mask(6, 16, 0.5, (3, 7, 1, 0))
    assert torch.equal(again["mask"], mask["mask"])  # the same seed: the same draw (resume)
    other = self_distill.draw_mask(6, 16, 0.5, (3, 8, 1, 0))
    assert not torch.equal(other["mask"], mask["mask"])
    assert self_distill.draw_mask(2, 196, 0.5, (0,))["mask"].sum(1).tolist() == [98, 98]
    # in the student's forward, the embeddings differ from the unmasked ones exactly there and
    # are the mask token (plus the position embedding) at every masked position
    model = tiny()
    visual, token = model.visual, model.self_distill.mask_token
    with torch.no_grad():
        token.normal_()
    seen = []
    hook = visual.ln_pre.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    images = torch.randn(6, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        self_distill.encode(visual, images)
        self_distill.encode(visual, images, mask["mask"], token)
    hook.remove()
    plain, masked = seen[0][:, 1:], seen[1][:, 1:]
    changed = (plain != masked).any(dim=-1)
    assert torch.equal(changed, mask["mask"])
    expected = token + visual.positional_embedding[1:]
    torch.testing.assert_close(masked[mask["mask"]], expected.expand(6, 16, -1)[mask["mask"]])


def test_accumulated_step_has_the_gradient_of_the_whole_batch():
    """Two micro-batches of 3 against one of 6 (the same images, crops and masks): the terms
    are per-image means, so the accumulated gradients and the teacher's statistics match."""
    grads, pending = [], []
    for k in (1, 2):
        model = tiny()
        model.self_distill.start(model.visual)
        images, tokens, host = inputs(model, 6)
        sd = host["self_distill"]
        crops = sd["local"].view(2, 6, 3, 16, 16)
        micro = []
        for rows in torch.arange(6).chunk(k):
            part = {
                "local": crops[:, rows].reshape(-1, 3, 16, 16),
                "mask": sd["mask"][rows],
                "positions": sd["positions"][rows],
            }
            micro.append((images[rows], tokens[rows], {"self_distill": part}))
        accumulate.forward_backward(self_distill.Learner(model), micro, "clip")
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        pending.append(model.self_distill.pending.clone())
    assert grads[0].keys() == grads[1].keys()
    assert any(n.startswith("self_distill.head.") for n in grads[0])
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(pending[1], pending[0])


def test_the_step_needs_no_device_value_on_the_host():
    """The worker draws the local crops after the global views; the host draws the mask; the
    step (transform with colour jitter on both kinds of view, teacher, terms, backward, EMA,
    centres) reads nothing back (see test_trainer_step_syncs.py)."""
    from test_trainer_step_syncs import SyncingOps
    from trainer_shards import captions, source_images

    from trainer import augment, data
    from trainer.train import StepExtras, host_inputs, prepare_micro_batch, self_distill_inputs

    torch.manual_seed(0)
    model = models.build_model("tiny-clip")
    cfg = self_distill.SelfDistillConfig(start_step=0, local_crops=2, local_size=16,
                                         prototypes=PROTOTYPES)  # fmt: skip
    model.self_distill = self_distill.SelfDistill(model.visual, cfg)
    model.self_distill.start(model.visual)
    tokenizer = models.build_tokenizer("tiny-clip", None, model.context_length)
    sizes = [(48, 40), (40, 48), (36, 36), (52, 30)]
    images = [torch.from_numpy(np.array(p.resize(s))) for p, s in zip(source_images(), sizes)]
    aug = augment.Augmentation(hflip=True, color_jitter=(0.4, 0.4, 0.4, 0.1))
    plain = data.make_batch(images, captions(4), tokenizer, 0, True, True, aug=aug)
    aug = augment.Augmentation(hflip=True, color_jitter=(0.4, 0.4, 0.4, 0.1), local_crops=2)
    batch = data.make_batch(images, captions(4), tokenizer, 0, True, True, aug=aug)
    assert "local_boxes" not in plain and batch["local_boxes"].shape == (2, 4, 4)  # crop-major
    assert [c["order"].shape for c in batch["local_colour"]] == [(4, 4), (4, 4)]
    for key in ("boxes", "flips"):  # the global views do not depend on the local crops
        assert torch.equal(plain[key], batch[key])
    assert all(torch.equal(plain["colour"][k], batch["colour"][k]) for k in ("order", "factors"))
    host = self_distill_inputs(cfg, batch, host_inputs(batch, model), 16, (0, 0, 0, 0))
    transform = augment.DeviceTransform.for_model(model, torch.device("cpu"))
    with SyncingOps() as inspected:
        micro, _, _ = prepare_micro_batch(
            batch, host, model, transform, torch.device("cpu"), contextlib.nullcontext,
            StepExtras(self_distill=cfg),
        )  # fmt: skip
        accumulate.forward_backward(self_distill.Learner(model), [micro], "clip")
        model.self_distill.after_step(model.visual)
    assert micro[2]["self_distill"]["local"].shape == (8, 3, 16, 16)
    assert not inspected.found, inspected.found
    # without local crops (--local-crops 0 --silc-weight 0): the masked prediction alone
    cfg = self_distill.SelfDistillConfig(start_step=0, local_crops=0, local_size=16,
                                         silc_weight=0.0, prototypes=PROTOTYPES)  # fmt: skip
    model.self_distill = self_distill.SelfDistill(model.visual, cfg)
    plain_host = self_distill_inputs(cfg, plain, host_inputs(plain, model), 16, (0, 0, 0, 0))
    micro, _, _ = prepare_micro_batch(
        plain, plain_host, model, transform, torch.device("cpu"), contextlib.nullcontext,
        StepExtras(self_distill=cfg),
    )  # fmt: skip
    out = self_distill.Learner(model)(*micro[:2], **micro[2])
    assert out["silc_loss"] == 0 and out["tips_loss"] > 0


# -- runs -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return run_shards(tmp_path_factory.mktemp("sd_shards"))


SD = ("--self-distill-from", "0.5", "--self-distill-dim", str(PROTOTYPES), "--local-crops", "2")


def rows(out: Path) -> dict[int, dict]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return {row["step"]: row for row in map(json.loads, lines) if "loss" in row}


def state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def sharded_state(path: Path) -> dict:
    """Every model key of a DCP checkpoint, the self-distillation parts included."""
    from trainer import checkpoint

    model = tiny().float()  # the runs' self-distillation parts: all their keys are read
    checkpoint.load_sharded(path, model)
    return model.state_dict()


def test_terms_switch_on_at_their_step_and_a_resume_gives_the_same_teacher(shards, tmp_path):
    plain = [
        "--train-data", str(shards / "train" / "{00000..00003}.tar"), "--model", "tiny-clip",
        "--batch-size", "8", "--steps", "8", "--lr", "1e-3", "--warmup", "2",
        "--precision", "fp32", "--workers", "1", "--log-every", "1", "--save-every", "2",
        "--keep-checkpoints", "0", "--hflip", "--color-jitter", "0.4", "0.4", "0.4", "0.1",
    ]  # fmt: skip
    common = [*plain, *SD]
    full, parts = tmp_path / "full", tmp_path / "parts"
    summary = train.main([*common, "--output-dir", str(full)])
    assert summary["self_distill"] == {"start_step": 4, "started": True}
    got = rows(full)
    assert [got[s]["silc_loss"] for s in (1, 2, 3, 4)] == [0.0] * 4
    assert [got[s]["tips_loss"] for s in (1, 2, 3, 4)] == [0.0] * 4
    assert all(got[s]["silc_loss"] > 0 and got[s]["tips_loss"] > 0 for s in (5, 6, 7, 8))
    # the teacher: a copy made at the switch-on, then EMA steps behind the student
    ckpt = full / "checkpoints"
    at4, at6 = state(ckpt / "step_00000004.pt"), state(ckpt / "step_00000006.pt")
    assert not at4["self_distill.started"] and at6["self_distill.started"]
    name = "visual.conv1.weight"
    assert not torch.equal(at6[f"self_distill.teacher.{name}"], at6[name])
    assert not torch.equal(at6[f"self_distill.teacher.{name}"], at4[name])
    # the interrupted run writes the other kind, DCP folders (in one process here)
    dcp = [*common, "--output-dir", str(parts), "--checkpoint-format", "dcp"]
    train.main([*dcp, "--exit-after", "6"])
    train.main([*dcp, "--resume", "latest"])
    assert losses(parts) == losses(full)
    expected = state(ckpt / "step_00000008.pt")
    resumed = sharded_state(parts / "checkpoints" / "step_00000008.dcp")
    assert expected.keys() == resumed.keys()
    assert any(k.startswith("self_distill.teacher.") for k in expected)
    for key in expected:
        assert torch.equal(expected[key], resumed[key]), key
    # evaluation and export load the model without the self-distillation parts
    model, _, _ = models.load_checkpoint_model(ckpt / "step_00000008.pt")
    assert not any(k.startswith("self_distill") for k in model.state_dict())
    with pytest.raises(train.UsageError, match="trained with --self-distill-from"):
        train.main([*plain, "--output-dir", str(parts), "--resume", "latest", "--steps", "10"])


def test_two_rank_resume_is_bit_identical_with_the_teacher(shards, tmp_path):
    """DDP on 2 gloo ranks with 2 micro-batches (the head is idle before the switch-on: DDP
    finds it unused). --fsdp with these terms: test_trainer_fsdp.py."""
    common = ["--steps", "6", "--save-every", "2", "--log-every", "1", "--accum-steps", "2",
              "--keep-checkpoints", "0", *SD]  # fmt: skip
    full, parts = tmp_path / "full", tmp_path / "parts"
    torchrun(shards, full, *common)
    got = rows(full)
    assert got[3]["silc_loss"] == 0 and got[4]["silc_loss"] > 0 and got[4]["tips_loss"] > 0
    torchrun(shards, parts, *common, "--exit-after", "4")
    result = torchrun(shards, parts, *common, "--resume", "latest")
    assert "step_00000004.pt" in result.stdout
    assert losses(parts) == losses(full)
    expected = state(full / "checkpoints" / "step_00000006.pt")
    resumed = state(parts / "checkpoints" / "step_00000006.pt")
    assert any(k.startswith("self_distill.teacher.") for k in expected)
    assert expected["self_distill.center"].abs().sum() > 0
    for key in expected:
        assert torch.equal(expected[key], resumed[key]), key


def test_bad_combinations_fail_with_one_line(shards, tmp_path, capsys):
    base = ["--train-data", str(shards / "train" / "00000.tar"), "--model", "tiny-clip",
            "--output-dir", str(tmp_path)]  # fmt: skip
    cases = {
        ("--mask-ratio", "0.3"): "need --self-distill-from",
        ("--self-distill-from", "1.2"): "in [0, 1)",
        ("--self-distill-from", "0.8", "--mask-ratio", "1"): "--mask-ratio must be in (0, 1)",
        ("--self-distill-from", "0.8", "--local-crops", "0"): "--local-crops must be >= 1",
        ("--self-distill-from", "0.8", "--lock-image"): "not with --lock-image",
    }
    for extra, message in cases.items():
        with pytest.raises(SystemExit):
            train.parse_args([*base, *extra])
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert message in err, (extra, err)
    with pytest.raises(train.UsageError, match="not a multiple of the 8 px patch"):
        train.main([*base, "--self-distill-from", "0.5", "--local-crop-size", "12", "--steps", "2",
                    "--batch-size", "4"])  # fmt: skip
