"""Launchers a GPU node uses (issue 35, case 5): one visible GPU per process under srun, and a
resume that sees fewer GPUs than the run that saved. CUDA does not run here, so torch.cuda's
device queries are stood in for; the logic under them is the trainer's own."""

from __future__ import annotations

import pytest
import torch

from trainer import checkpoint, distributed


def test_each_process_drives_its_local_rank_or_its_one_visible_gpu():
    assert distributed.cuda_index(2, 8) == 2  # torchrun: all of a node's GPUs visible
    assert distributed.cuda_index(5, 1) == 0  # srun --gpus-per-task=1: only device 0 visible
    with pytest.raises(ValueError, match="local rank 5 but 4 GPU"):
        distributed.cuda_index(5, 4)  # two processes would share a GPU


def test_init_uses_the_one_visible_gpu_of_an_srun_task(monkeypatch):
    chosen = []
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    for key in ("RANK", "WORLD_SIZE", "SLURM_PROCID"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "1")  # one rank: no process group to join here
    info = distributed.init_distributed("cuda")
    assert info.device == torch.device("cuda", 0) and chosen == [torch.device("cuda", 0)]


def test_gpu_rng_state_is_this_process_gpu_and_restores_with_fewer_gpus(monkeypatch):
    states = {0: torch.arange(16, dtype=torch.uint8), 1: torch.arange(16, 32, dtype=torch.uint8)}
    current, restored = [1], []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: current[0])
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda: states[current[0]])
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda t: restored.append(t.tolist()))
    saved = checkpoint.rng_state()
    assert saved["cuda"] == [states[1].tolist()]  # not every visible GPU's
    current[0] = 0  # the resume sees one GPU: its device 0 gets the saved state
    checkpoint.set_rng_state(saved)
    assert restored == [states[1].tolist()]
    # a checkpoint from before, with every visible GPU's state: the current device's entry
    old = {**saved, "cuda": [states[0].tolist(), states[1].tolist(), [7] * 16]}
    current[0] = 1
    checkpoint.set_rng_state(old)
    assert restored[-1] == states[1].tolist()


def test_ddp_broadcasts_buffers_only_for_batch_norm_statistics():
    """open_clip's ViTs hold only constant buffers (the causal attention mask): DDP need not
    broadcast them every forward; a ResNet tower's batch-norm statistics it must."""
    import open_clip

    from trainer.models import register_configs
    from trainer.train import has_running_stats

    register_configs()
    vit = open_clip.create_model("tiny-clip")  # open_clip's ViT and text towers, small
    assert dict(vit.named_buffers()) and not has_running_stats(vit)
    resnet_like = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    assert has_running_stats(resnet_like)
    assert not has_running_stats(
        torch.nn.Sequential(torch.nn.BatchNorm2d(4, track_running_stats=False))
    )
