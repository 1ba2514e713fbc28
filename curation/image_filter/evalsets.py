"""The images of evaluation sets, hashed, for decontamination: CLIP_benchmark's WebDataset
layout (`SPLIT/{0..n-1}.tar` with an image member per sample), as `trainer.datasets` and
`trainer.benchmark_sets` write it. Only the evaluation split (`test/`, else the tars at the
top of the folder) is read: a linear probe's `train/` split is training data by design."""

from __future__ import annotations

import dataclasses
import io
import posixpath

import numpy as np
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
    for split in (f"{folder.rstrip('/')}/test", folder):
        tars = tables.list_files(split, ".tar", missing_ok=True)
        if tars:
            return tars
    raise FilterError(f"--eval-sets {folder}: no test/*.tar (CLIP_benchmark's layout) found")


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
