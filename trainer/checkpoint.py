"""Atomic checkpoints: write to a temp file in the same directory, fsync, rename."""

from __future__ import annotations

import os
import random
import re
from pathlib import Path

import numpy as np
import torch

CHECKPOINT_RE = re.compile(r"^step_(\d+)\.pt$")


def rng_state() -> dict:
    """torch, CUDA, Python and NumPy generator states as plain JSON-able lists."""
    version, mt, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state().tolist(),
        "cuda": [s.tolist() for s in torch.cuda.get_rng_state_all()]
        if torch.cuda.is_available()
        else [],
        "python": [version, list(mt), gauss],
        "numpy": [np_name, np_keys.tolist(), int(np_pos), int(np_has_gauss), float(np_gauss)],
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))


def checkpoint_path(directory: Path, step: int) -> Path:
    return Path(directory) / f"step_{step:08d}.pt"


def save(state: dict, directory: Path, step: int, keep: int = 0) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = checkpoint_path(directory, step)
    tmp = final.with_name(f".{final.name}.tmp.{os.getpid()}")
    with tmp.open("wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    if keep > 0:
        for old in list_checkpoints(directory)[:-keep]:
            old.unlink(missing_ok=True)
    return final


def list_checkpoints(directory: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temp files of an interrupted write are ignored)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(CHECKPOINT_RE.match(p.name), p) for p in directory.iterdir()]
    return [p for _, p in sorted((int(m.group(1)), p) for m, p in found if m)]


def resolve(resume: str, directory: Path) -> Path | None:
    """'latest' -> newest checkpoint in directory (None when there is none yet), else a path."""
    if resume == "latest":
        found = list_checkpoints(directory)
        return found[-1] if found else None
    path = Path(resume)
    if not path.is_file():
        raise FileNotFoundError(f"--resume {resume}: no such checkpoint")
    return path


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)
