"""Atomic checkpoints: write to a temp name in the same directory, fsync, rename.

Two kinds, both found by `--resume latest`:
- `step_N.pt`: one file, rank 0 writes the whole state (DDP);
- `step_N.dcp/`: a `torch.distributed.checkpoint` folder, every rank writes its own shards
  (FSDP), asynchronously: the state is staged to host memory (pinned and reused from one save
  to the next on CUDA), training goes on, and a background thread writes it into
  `.step_N.dcp.tmp/`. Rank 0 renames the folder once DCP's
  `.metadata` (written after every rank's shards) and our `trainer_state.json` (step, data
  positions, RNG, scheduler: JSON) are in it, so a killed writer leaves only a temp folder.
  DCP reshards on load: a checkpoint saved at one world size resumes at another, with or
  without FSDP. A folder with a missing or short shard counts as damaged, like a cut `.pt`.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import random
import re
import shutil
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch

CHECKPOINT_RE = re.compile(r"^step_(\d+)\.(pt|dcp)$")
TRAINER_STATE = "trainer_state.json"


def rng_state() -> dict:
    """torch, CUDA, Python and NumPy generator states as plain JSON-able lists."""
    version, mt, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state().tolist(),
        # this process's GPU only (the one set_device chose): a resume may see fewer GPUs
        "cuda": [torch.cuda.get_rng_state().tolist()] if torch.cuda.is_available() else [],
        "python": [version, list(mt), gauss],
        "numpy": [np_name, np_keys.tolist(), int(np_pos), int(np_has_gauss), float(np_gauss)],
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state(torch.tensor(_own_cuda_state(state["cuda"]), dtype=torch.uint8))
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))


def _own_cuda_state(states: list) -> list:
    """This process's GPU generator state: the one saved, or, from a checkpoint that saved every
    visible GPU's, the entry of the current device (the first when it saw fewer GPUs)."""
    if len(states) == 1:
        return states[0]
    return states[min(torch.cuda.current_device(), len(states) - 1)]


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
    _fsync(directory)
    _prune(directory, keep)
    return final


def is_complete(path: Path) -> bool:
    if path.suffix == ".dcp":
        return (path / ".metadata").is_file() and (path / TRAINER_STATE).is_file()
    return path.is_file()


def list_checkpoints(directory: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temp files of an interrupted write are ignored)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(CHECKPOINT_RE.match(p.name), p) for p in directory.iterdir()]
    steps = sorted((int(m.group(1)), p.suffix == ".dcp", p) for m, p in found if m)
    return [p for _, _, p in steps if is_complete(p)]


def resolve(resume: str, directory: Path) -> Path | None:
    """'latest' -> newest checkpoint in directory (None when there is none yet), else a path."""
    if resume == "latest":
        found = list_checkpoints(directory)
        return found[-1] if found else None
    path = Path(resume)
    if not path.exists():
        raise FileNotFoundError(f"--resume {resume}: no such checkpoint")
    if not is_complete(path):
        raise ValueError(f"--resume {resume}: an incomplete checkpoint folder (no .metadata)")
    return path


class DamagedCheckpoint(ValueError):
    """A checkpoint file that cannot be read (truncated, overwritten, not ours)."""


def load(path: Path) -> dict:
    """The checkpoint's state; for a DCP folder its trainer_state.json (model and optimizer
    are loaded into live objects by `load_sharded`) once its shards are checked whole. Only
    ever with weights_only=True: a file that needs more is refused, never unpickled. A file
    whose bytes do not decode, or a DCP shard that is missing or short, raises
    DamagedCheckpoint; other failures (permissions, memory, I/O) are raised as they are."""
    path = Path(path)
    try:
        if path.is_dir():
            _check_shards(path)
            return json.loads((path / TRAINER_STATE).read_text(encoding="utf-8"))
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - sorted just below: damage or not
        if not _is_damage(error):
            raise
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        reason = type(error).__name__ if "weights_only" in first else first[:200]
        raise DamagedCheckpoint(f"checkpoint {path} cannot be read ({reason})") from None


def _check_shards(path: Path) -> None:
    """Every shard file that DCP's .metadata points into exists and reaches the end of each of
    its entries (offset + length), so a folder whose copy stopped or that lost a shard is found
    here, before its state is used, not deep inside `dcp.load` with a long traceback."""
    from torch.distributed.checkpoint import FileSystemReader

    try:  # torch's own reader of torch's own file
        entries = list(FileSystemReader(str(path)).read_metadata().storage_data.values())
    except OSError:
        raise
    except Exception as error:  # noqa: BLE001 - any failure to decode .metadata is damage
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise DamagedCheckpoint(f"checkpoint {path} cannot be read (.metadata: {reason})") from None
    needed: dict[str, int] = {}
    for entry in entries:
        end = entry.offset + entry.length
        needed[entry.relative_path] = max(needed.get(entry.relative_path, 0), end)
    for name, size in sorted(needed.items()):
        shard = path / name
        have = shard.stat().st_size if shard.is_file() else None
        if have is None or have < size:
            held = "missing" if have is None else f"{have} of {size} bytes"
            raise DamagedCheckpoint(f"checkpoint {path} cannot be read (shard {name}: {held})")


def _is_damage(error: BaseException) -> bool:
    """Bytes that are not a whole checkpoint: a truncated zip, a bad pickle, bad JSON."""
    if isinstance(error, (EOFError, pickle.UnpicklingError, zipfile.BadZipFile)):
        return True
    if isinstance(error, json.JSONDecodeError | UnicodeDecodeError):
        return True
    text = str(error)
    if isinstance(error, RuntimeError):
        return "PytorchStreamReader" in text or "unexpected EOF" in text or "zip archive" in text
    # torch's zip reader reports a file cut inside its central directory as EINVAL
    return isinstance(error, OSError) and error.errno == errno.EINVAL


def resolve_and_load(resume: str, directory: Path, warn) -> tuple[Path | None, dict | None]:
    """`resolve` then `load`; with 'latest', a damaged newest checkpoint (a write cut short by
    a full disk, a copy that stopped) is passed over with one warning for the one before. When
    there are checkpoints and none of them loads, that is an error, not a fresh start."""
    if resume != "latest":
        path = resolve(resume, directory)
        return path, load(path)
    found = list_checkpoints(directory)
    for path in reversed(found):
        try:
            return path, load(path)
        except DamagedCheckpoint as error:
            warn(f"warning: {error}; resuming from the checkpoint before it")
    if found:
        raise DamagedCheckpoint(
            f"none of the {len(found)} checkpoints in {directory} can be read; move them away "
            "to start afresh"
        )
    return None, None


def load_sharded(path: Path, model, optimizer=None) -> None:
    """Model (and optimizer) state of a DCP folder into `model`, whatever its sharding."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    with warnings.catch_warnings():
        # one process reading every rank's shards is what we mean here
        warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)
        if optimizer is None:
            state = {"model": model.state_dict()}
            dcp.load(state, checkpoint_id=str(path))
            model.load_state_dict(state["model"])
            return
        model_state, optim_state = get_state_dict(model, optimizer)
        state = {"model": model_state, "optim": optim_state}
        dcp.load(state, checkpoint_id=str(path))
    set_state_dict(
        model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"]
    )


class ShardedCheckpointer:
    """DCP checkpoints written by every rank; at most one write in flight."""

    def __init__(self, directory: Path, keep: int, is_main: bool, use_async: bool = True):
        import torch.distributed as dist

        self.directory, self.keep, self.is_main = Path(directory), keep, is_main
        distributed = dist.is_available() and dist.is_initialized()
        self.use_async = use_async and distributed
        # a gloo group of its own: the background writer's collectives must not interleave
        # with the training collectives of the default group
        self.group = dist.new_group(backend="gloo") if self.use_async else None
        self.writer = None
        if self.use_async:
            from torch.distributed.checkpoint import FileSystemWriter

            # one writer for every save: with CUDA it stages into pinned host memory that it
            # allocates at the first save and reuses (`async_save`'s default stager allocates
            # fresh pageable memory every time: a slower copy and a stall at every save)
            self.writer = FileSystemWriter(
                self.directory, cache_staged_state_dict=torch.cuda.is_available()
            )
        self.pending = None  # (future, temp folder, final folder)
        self.on_publish = None  # called with each published folder (rank 0): --remote-sync

    def save(self, model, optimizer, trainer_state: dict, step: int) -> Path:
        import torch.distributed as dist
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        self.wait()
        final = self.directory / f"step_{step:08d}.dcp"
        tmp = self.directory / f".{final.name}.tmp"
        if self.is_main:
            shutil.rmtree(tmp, ignore_errors=True)  # a killed writer's leftovers
            tmp.mkdir(parents=True)
            _write_json(tmp / TRAINER_STATE, trainer_state)
        if dist.is_available() and dist.is_initialized():
            dist.barrier()
        model_state, optim_state = get_state_dict(model, optimizer)
        state = {"model": model_state, "optim": optim_state}
        if self.use_async:
            future = dcp.async_save(
                state, checkpoint_id=str(tmp), storage_writer=self.writer, process_group=self.group
            )
            self.pending = (future, tmp, final)
        else:
            with warnings.catch_warnings():  # one process writing the whole state: meant
                warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)
                dcp.save(state, checkpoint_id=str(tmp))
            self.pending = (None, tmp, final)
            self.wait()
        return final

    def wait(self) -> Path | None:
        """Block until the write in flight is on disk, then publish it (rank 0)."""
        if self.pending is None:
            return None
        future, tmp, final = self.pending
        self.pending = None
        if future is not None:
            future.result()
        if self.is_main:
            _publish(tmp, final)
            _prune(self.directory, self.keep)
            print(f"saved {final}", flush=True)
            if self.on_publish is not None:
                self.on_publish(final)
        return final


def _write_json(path: Path, obj) -> None:
    with path.open("w", encoding="utf-8") as f:
        json.dump(obj, f)
        f.flush()
        os.fsync(f.fileno())


def _publish(tmp: Path, final: Path) -> None:
    for name in os.listdir(tmp):
        _fsync(tmp / name)
    if final.exists():  # a rerun of the same step
        _remove(final)
    os.replace(tmp, final)
    _fsync(final.parent)


def _fsync(path: Path) -> None:
    """fsync a file or a directory (a rename is durable once its directory is synced)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _prune(directory: Path, keep: int) -> None:
    """Remove all but the newest `keep` complete checkpoints (0 keeps all)."""
    if keep > 0:
        for old in list_checkpoints(directory)[:-keep]:
            _remove(old)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
