"""No host sync in a training step (issue 35, case 4): on a GPU, an op whose result the host
must read (`.item()`, `int(t)`, a boolean mask, `nonzero`) stalls the CPU until the device has
drained its queue, so the next step's kernels are not queued in time. CPU shows the ops, not the
stall: every aten op of one step is inspected and the ones that synchronise on CUDA are listed
with the line that called them. The same step runs on a GPU in `benchmarks/gpu_check.py`
(`syncs`, under `torch.cuda.set_sync_debug_mode`).
"""

from __future__ import annotations

import traceback

import numpy as np
import pytest
import torch

pytest.importorskip("open_clip")

from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from trainer_shards import captions, source_images  # noqa: E402

from trainer import accumulate, augment, data, models  # noqa: E402
from trainer.train import host_inputs, micro_batch, optimizer_step  # noqa: E402

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


def one_step(model, batch, loss: str, accum: int) -> list[str]:
    """train.py's step: the host's inputs from the CPU batch, then (under the inspection) the
    device copies and transform, forward + backward over `accum` micro-batches, the clipped
    fused-AdamW step."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    transform = augment.DeviceTransform.for_model(model, torch.device("cpu"))
    hosts = [host_inputs(batch, model) for _ in range(accum)]  # CPU work, on CPU tensors
    with SyncingOps() as inspected:
        micro = [micro_batch(batch, transform, host, torch.device("cpu")) for host in hosts]
        accumulate.forward_backward(model, micro, loss)
        optimizer_step(model, optimizer, scaler, grad_clip=1.0)
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
