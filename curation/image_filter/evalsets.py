"""The images of evaluation sets, hashed, for decontamination: CLIP_benchmark's WebDataset
layout (`SPLIT/{0..n-1}.tar` with an image member per sample), as `trainer.datasets` and
`trainer.benchmark_sets` write it. Only the evaluation split (`test/`, else the tars at the
top of the folder) is read: a linear probe's `train/` split is training data by design."""

from __future__ import annotations

import dataclasses
import io
import posixpath

import numpy as np
import pyarrow.fs as pafs
from PIL import Image

from curation.core import tables
from curation.core.jobs import FilterError
from curation.core.uris import open_binary
from curation.image_filter import hashes
from curation.image_filter.samples import image_of, iter_samples


@dataclasses.dataclass(frozen=True)
class EvalImages:
    """Every hashed evaluation image: set name, sample key, SHA-256, pHash, PDQ quality."""

    names: tuple[str, ...]
    keys: tuple[str, ...]
    sha256: tuple[str, ...]
    phash: tuple[str, ...]
    quality: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.keys)

    def phash_words(self) -> np.ndarray:
        return hashes.hex_to_words(list(self.phash))


def eval_tars(folder: str) -> list[str]:
    fs, path = tables.filesystem(folder)
    for split in (posixpath.join(path, "test"), path):
        infos = fs.get_file_info(pafs.FileSelector(split, allow_not_found=True))
        tars = sorted(
            i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(".tar")
        )
        if tars:
            return [uri_of(folder, t) for t in tars]
    raise FilterError(f"--eval-sets {folder}: no test/*.tar (CLIP_benchmark's layout) found")


def uri_of(folder: str, path: str) -> str:
    """A path that `tables.filesystem(folder)` listed, as a URI like `folder`."""
    return f"{folder.split('://', 1)[0]}://{path}" if "://" in folder else path


def hash_eval_sets(folders: list[str]) -> EvalImages:
    names, keys, sha, phash, quality = [], [], [], [], []
    for folder in folders:
        name = posixpath.basename(folder.rstrip("/"))
        for tar in eval_tars(folder):
            with open_binary(tar) as stream:
                for key, members in iter_samples(stream):
                    _, data = image_of(members)
                    if data is None:
                        continue
                    image = Image.open(io.BytesIO(data)).convert("RGB")
                    names.append(name)
                    keys.append(f"{posixpath.basename(tar)[:-4]}/{key}")
                    sha.append(hashes.sha256_hex(data))
                    phash.append(hashes.phash(image))
                    quality.append(hashes.pdq(np.asarray(image))[1])
    return EvalImages(tuple(names), tuple(keys), tuple(sha), tuple(phash), tuple(quality))
