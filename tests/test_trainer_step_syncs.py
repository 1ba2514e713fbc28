"""No host sync in a training step (issue 35, case 4): on a GPU, an op whose result the host
must read (`.item()`, `int(t)`, a boolean mask, `nonzero`) stalls the CPU until the device has
drained its queue, so the next step's kernels are not queued in time. CPU shows the ops, not the
stall: every aten op of one step is inspected and the ones that synchronise on CUDA are listed
with the line that called them. The same step runs on a GPU in `benchmarks/gpu_check.py`
(`syncs`, under `torch.cuda.set_sync_debug_mode`).
"""

from __future__ import annotations

import contextlib
import traceback

import numpy as np
import pytest
import torch

pytest.importorskip("open_clip")

from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from trainer_shards import captions, source_images  # noqa: E402

from trainer import accumulate, acid, augment, data, distill, models  # noqa: E402
from trainer.train import (  # noqa: E402
    NonFiniteSteps,
    StepExtras,
    host_inputs,
    optimizer_step,
    prepare_micro_batch,
)

aten = torch.ops.aten
# ops whose result size or value the host needs on CUDA (each waits for the device)
SYNCING = {
    aten._local_scalar_dense,  # .item(), int(t), float(t), bool(t), `if t:`
    aten.nonzero,
    aten.masked_select,
    aten.is_nonzero,
    aten.equal,
    aten.unique_consecutive,
    aten._unique2,
    aten.unique_dim,
    aten.bincount,
}
INDEXING = {aten.index, aten.index_put, aten.index_put_}  # with a boolean mask: a nonzero


def _boolean_index(args) -> bool:
    indices = args[1] if len(args) > 1 else []
    return any(torch.is_tensor(i) and i.dtype == torch.bool for i in indices)


class SyncingOps(TorchDispatchMode):
    """Records each op that would synchronise on CUDA and the project line that called it."""

    def __init__(self):
        super().__init__()
        self.found: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        packet = func.overloadpacket
        repeat = packet is aten.repeat_interleave and "output_size" not in (kwargs or {})
        if packet in SYNCING or repeat or (packet in INDEXING and _boolean_index(args)):
            frames = [f for f in traceback.extract_stack() if "/trainer/" in f.filename]
            where = f"{frames[-1].filename.split('/')[-1]}:{frames[-1].lineno}" if frames else "?"
            self.found.append(f"{func} at {where}")
        return func(*args, **(kwargs or {}))


def one_step(model, batch, loss: str, accum: int, extras=None) -> list[str]:
    """train.py's step: the host's inputs from the CPU batch, then (under the inspection) the
    device copies and transform, the teacher / ACID work of `extras`, forward + backward over
    `accum` micro-batches, the clipped fused-AdamW step with its non-finite guard and the loop's
    loss and skip accounting."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    transform = augment.DeviceTransform.for_model(model, torch.device("cpu"))
    extras = extras or StepExtras()
    hosts = [host_inputs(batch, model) for _ in range(accum)]  # CPU work, on CPU tensors
    nonfinite, loss_sum = NonFiniteSteps(torch.device("cpu")), 0.0
    with SyncingOps() as inspected:
        micro, taught = [], []
        for host in hosts:
            m, t, _ = prepare_micro_batch(
                batch, host, model, transform, torch.device("cpu"), contextlib.nullcontext, extras
            )
            micro.append(m)
            if t is not None:
                taught.append(t)
        step_loss = accumulate.forward_backward(model, micro, loss, teacher=taught or None)
        skipped = optimizer_step(model, optimizer, scaler, grad_clip=1.0, loss=step_loss)
        loss_sum = loss_sum + torch.where(skipped > 0, 0.0, step_loss)
        nonfinite.add(skipped)
        optimizer.zero_grad(set_to_none=True)
    return inspected.found


def loader_batch(model) -> dict:
    """What a worker hands over: four photographs of different sizes on a canvas, captions."""
    tokenizer = models.build_tokenizer("tiny-clip", None, model.context_length)
    sizes = [(48, 40), (40, 48), (36, 36), (52, 30)]
    images = [torch.from_numpy(np.array(p.resize(s))) for p, s in zip(source_images(), sizes)]
    return data.make_batch(images, captions(4), tokenizer, 0, True, True)


@pytest.mark.parametrize(
    "loss, accum",
    [("clip", 1), ("siglip", 2), ("caption", 1), ("siglip+caption", 2)],
)
def test_a_training_step_reads_nothing_back_from_the_device(loss, accum):
    name = "tiny-caption" if "caption" in loss else "tiny-clip"
    torch.manual_seed(0)
    model = models.build_model(name, loss)
    found = one_step(model, loader_batch(model), loss, accum)
    assert not found, found


@pytest.mark.parametrize("accum", [1, 2])
def test_distillation_and_acid_read_nothing_back_either(accum):
    """A distilled step with ACID (2x drawn, the teacher as reference), and ACID with a
    separate reference, whose teacher then runs on the kept rows only."""
    torch.manual_seed(0)
    model = models.build_model("tiny-clip")
    teacher = distill.Teacher(models.build_model("tiny-clip-w32"), 32, None, torch.device("cpu"))
    batch = loader_batch(model)
    batch["langs"] = ["en", "de", "en", "ja"]
    counts = acid.SelectionCounts(torch.device("cpu"))
    for reference in (None, teacher):
        extras = StepExtras(teacher, reference, counts, batch_size=2)
        found = one_step(model, batch, "clip", accum, extras)
        assert not found, found
    seen = counts.read()  # two runs x accum micro-batches of 4 drawn ("en" twice), 2 kept
    assert seen["en"]["drawn"] == 2 * 2 * accum
    assert sum(c["kept"] for c in seen.values()) == 2 * 2 * accum


def test_the_inspection_sees_the_syncs_of_a_caption_forward_without_the_host_plan():
    """The counter can fail: a caption forward that computes its plan on the device reads the
    longest caption back (`int(max)`) and selects its target positions with a mask."""
    torch.manual_seed(0)
    model = models.build_model("tiny-caption", "caption")
    batch = loader_batch(model)
    transform = augment.DeviceTransform.for_model(model, torch.device("cpu"))
    with SyncingOps() as inspected:
        model(transform(batch), batch["tokens"])
    assert any("_local_scalar_dense" in f and "caption.py" in f for f in inspected.found)
    assert any("nonzero" in f and "caption.py" in f for f in inspected.found)
