"""`--remote-sync URI`: checkpoints copied to an object store as they are written, and fetched
back by `--resume latest` on a machine that has none (a preempted node's replacement).

open_clip's flag of the same name syncs the whole log folder every `--remote-sync-frequency`
seconds with `aws s3 sync` or fsspec; here each checkpoint is uploaded once it is complete on
local disk (in a background thread, one upload at a time, so training goes on), with pyarrow's
filesystems (s3://, gs://, abfs://, hdfs://, or a local folder), credentials and endpoint from
each store's standard chain. The remote copy is complete when its marker is there: a `.pt` is
one object (a PUT is atomic), a `.dcp` folder's `.metadata` and trainer state are uploaded after
its shards, as `checkpoint.is_complete` expects locally. The remote keeps the same number of
checkpoints as `--keep-checkpoints`. At the end of the run `metrics.jsonl` and `summary.json`
follow.
"""

from __future__ import annotations

import posixpath
import shutil
import threading
from pathlib import Path

import pyarrow.fs as pafs

from trainer import checkpoint

# uploaded last: a remote .dcp folder without them is incomplete (checkpoint.is_complete)
MARKERS = (".metadata", checkpoint.TRAINER_STATE)


class RemoteSync:
    def __init__(self, uri: str):
        from curation.core import tables

        self.fs, root = tables.filesystem(uri)
        self.uri, self.root = uri.rstrip("/"), root.rstrip("/")
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def remote(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def check(self) -> None:
        """Fail before training if the URI cannot be written (a typo, no credentials)."""
        from curation.core import tables

        tables.check_writable(self.uri)

    # -- uploads ---------------------------------------------------------------------------

    def upload_checkpoint(self, path: Path, keep: int) -> None:
        """Start uploading a complete local checkpoint (after the previous upload finished)."""
        self.wait()
        self.thread = threading.Thread(target=self._run, args=(path, keep), daemon=True)
        self.thread.start()

    def _run(self, path: Path, keep: int) -> None:
        try:
            self._upload(path)
            self._prune(keep)
        except BaseException as error:  # noqa: BLE001 - raised by wait(), in the training loop
            self.error = error

    def _upload(self, path: Path) -> None:
        target = self.remote("checkpoints", path.name)
        if path.is_file():
            self._put(path, target)
            return
        files = sorted(p for p in path.rglob("*") if p.is_file())
        for file in sorted(files, key=lambda p: p.name in MARKERS):  # markers last
            self._put(file, posixpath.join(target, file.relative_to(path).as_posix()))

    def _put(self, local: Path, target: str) -> None:
        self.fs.create_dir(posixpath.dirname(target), recursive=True)
        pafs.copy_files(str(local), target, destination_filesystem=self.fs)

    def _prune(self, keep: int) -> None:
        if keep > 0:
            for name in self.complete()[:-keep]:
                target = self.remote("checkpoints", name)
                if name.endswith(".dcp"):
                    self.fs.delete_dir(target)
                else:
                    self.fs.delete_file(target)

    def upload_logs(self, out_dir: Path) -> None:
        for name in ("metrics.jsonl", "summary.json"):
            if (out_dir / name).is_file():
                self._put(out_dir / name, self.remote(name))

    def wait(self) -> None:
        """Block until the upload in flight is done; raise what it failed with."""
        if self.thread is not None:
            self.thread.join()
            self.thread = None
        if self.error is not None:
            error, self.error = self.error, None
            raise OSError(f"--remote-sync {self.uri}: upload failed: {error}") from error

    # -- resume ----------------------------------------------------------------------------

    def complete(self) -> list[str]:
        """Names of the complete checkpoints under URI/checkpoints, oldest first."""
        folder = self.remote("checkpoints")
        infos = self.fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
        found = []
        for info in infos:
            match = checkpoint.CHECKPOINT_RE.match(info.base_name)
            if match is None:
                continue
            if info.base_name.endswith(".dcp"):
                markers = [self.remote("checkpoints", info.base_name, m) for m in MARKERS]
                if any(i.type != pafs.FileType.File for i in self.fs.get_file_info(markers)):
                    continue
            elif info.type != pafs.FileType.File:
                continue
            found.append((int(match.group(1)), info.base_name.endswith(".dcp"), info.base_name))
        return [name for *_, name in sorted(found)]

    def fetch_newer(self, ckpt_dir: Path) -> Path | None:
        """Download the newest remote checkpoint into `ckpt_dir` when the local folder has no
        checkpoint of that step or later (a new machine); returns it, or None."""
        names = self.complete()
        if not names:
            return None
        newest = names[-1]
        step = int(checkpoint.CHECKPOINT_RE.match(newest).group(1))
        local = checkpoint.list_checkpoints(ckpt_dir)
        if local and int(checkpoint.CHECKPOINT_RE.match(local[-1].name).group(1)) >= step:
            return None
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        final = ckpt_dir / newest
        tmp = ckpt_dir / f".{newest}.fetch"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.unlink(missing_ok=True)
        _copy_down(self.fs, self.remote("checkpoints", newest), tmp, newest.endswith(".dcp"))
        tmp.replace(final)
        return final


def download(uri: str, folder: Path) -> Path:
    """A checkpoint (a .pt object or a .dcp folder) at a remote URI copied into `folder`."""
    from curation.core import tables

    fs, path = tables.filesystem(uri)
    path = path.rstrip("/")
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"{uri}: no such checkpoint")
    local = Path(folder) / posixpath.basename(path)
    _copy_down(fs, path, local, info.type == pafs.FileType.Directory)
    return local


def _copy_down(fs: pafs.FileSystem, path: str, local: Path, folder: bool) -> None:
    """A remote file, or a folder and everything in it, copied to the local path `local`."""
    if folder:
        local.mkdir(parents=True)
    pafs.copy_files(path, str(local), source_filesystem=fs)
