"""py3langid as a batch second opinion for lid.176 (see `curation.alt_text.lid.FastTextLID`).

py3langid (BSD-3, langid.py's naive Bayes model over byte n-grams, 140 labels, the model inside
its wheel as an LZMA'd npz) scores one text per Python call. `Py3LangID.probabilities` scores a
batch: one numba walk of the byte-level DFA over all texts' UTF-8, one numpy gather-and-sum of
the feature rows, then py3langid's length-tempered softmax (T = sqrt(bytes)) and its folding of
script aliases (`srl` into `sr`, Cyrillic `uz` into `uz`). The probabilities equal
`LanguageIdentifier.rank` with `norm_probs=True` to float32 rounding (tests/test_lid_second.py).

`schemas/py3langid_labels.csv` maps its labels onto lid.176's (`gug` is lid.176's `gn`) and says
which lid.176 answers the fusion may revise (`gate`) and which labels it may answer (`answer`).
"""

from __future__ import annotations

import csv
import unicodedata
from dataclasses import dataclass

import numpy as np
from numba import njit

from curation.languages import schemas_dir

MAPPING_FILE = "py3langid_labels.csv"


@dataclass(frozen=True)
class LabelMapping:
    label: str  # py3langid's label
    lid176_label: str | None  # the lid.176 label it fuses with (None: lid.176 has none)
    wiki_code: str | None
    gate: bool  # the fusion may revise a lid.176 answer of this label
    answer: bool  # the fusion may answer this label (only labels lid.176 has)


def load_mapping() -> list[LabelMapping]:
    with open(schemas_dir() / MAPPING_FILE, newline="", encoding="utf-8") as f:
        return [
            LabelMapping(
                row["label"],
                row["lid176_label"] or None,
                row["wiki_code"] or None,
                row["gate"] == "true",
                row["answer"] == "true",
            )
            for row in csv.DictReader(f)
        ]


class Py3LangID:
    """py3langid's model, scored in batches."""

    def __init__(self):
        import py3langid.langid as langid
        from py3langid.modelio import load_model

        ptc, pc, classes, nextmove, rows, output = load_model(langid.MODEL_DIR / langid.MODEL_FILE)
        # (features, classes): float32 here (57 MB) where py3langid keeps float16, so the
        # kernel reads rows without a conversion per feature
        self.ptc = np.ascontiguousarray(ptc, dtype=np.float32)
        self.pc = np.asarray(pc, dtype=np.float32)
        self.nextmove = np.frombuffer(nextmove, dtype=_DTYPE[nextmove.itemsize]).astype(np.int64)
        self.rowbase = np.frombuffer(rows, dtype=_DTYPE[rows.itemsize]).astype(np.int64) << 8
        self.output = np.asarray(output, dtype=np.int32)
        self.labels = list(dict.fromkeys(classes))
        column = {label: i for i, label in enumerate(self.labels)}
        self._fold = np.array([column[c] for c in classes], dtype=np.int64)

    def probabilities(self, texts: list[str]) -> np.ndarray:
        """(texts, labels) probabilities, columns in `self.labels` order."""
        encoded = [_encode(text) for text in texts]
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in encoded], out=offsets[1:])
        data = np.frombuffer(b"".join(encoded), dtype=np.uint8)
        return _probabilities(
            data, offsets, self.nextmove, self.rowbase, self.output, self.ptc, self.pc,
            self._fold, len(self.labels),
        )  # fmt: skip


_DTYPE = {2: np.uint16, 4: np.uint32, 8: np.uint64}


def _encode(text: str) -> bytes:
    """The bytes py3langid scores: ALL-CAPS lower-cased, NFC, UTF-8."""
    if text.isupper():
        text = text.lower()
    return unicodedata.normalize("NFC", text).encode("utf-8", "surrogatepass")


@njit(cache=True, nogil=True)
def _probabilities(data, offsets, nextmove, rowbase, output, ptc, pc, fold, nlabels):
    """py3langid's `_decide` with `norm_probs`, for every text of the buffer."""
    n, width = offsets.size - 1, ptc.shape[1]
    probs = np.zeros((n, nlabels), dtype=np.float32)
    features = np.empty(max(data.size, 1), dtype=np.int64)
    scores = np.empty(width, dtype=np.float32)
    for t in range(n):
        start, end = offsets[t], offsets[t + 1]
        nfeatures, state = 0, 0
        for i in range(start, end):
            state = nextmove[rowbase[state] + data[i]]
            if output[state] >= 0:
                features[nfeatures] = output[state]
                nfeatures += 1
        scores[:] = 0.0
        if nfeatures:  # else 0 everywhere: uniform after the softmax, as in py3langid
            visits = np.sort(features[:nfeatures])
            i = 0
            while i < nfeatures:
                j = i
                while j < nfeatures and visits[j] == visits[i]:
                    j += 1
                weight = np.float32(np.log1p(np.float32(j - i)))
                row = ptc[visits[i]]
                for c in range(width):
                    scores[c] += weight * row[c]
                i = j
            for c in range(width):
                scores[c] += pc[c]
        temperature = np.float32(1.0 / np.sqrt(max(end - start, 1)))
        top = np.float32(-np.inf)
        for c in range(width):
            scores[c] *= temperature
            top = max(top, scores[c])
        total = np.float32(0.0)
        for c in range(width):
            scores[c] = np.exp(scores[c] - top)
            total += scores[c]
        for c in range(width):
            probs[t, fold[c]] += scores[c] / total
    return probs
