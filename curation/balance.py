"""Head/tail thresholds and deterministic balanced sampling (docs/semantics.md, sections 7-8).

The one home of these rules: the curation job's tasks, online curation in the trainer and the
one-process reference (`sample_records`) all call the functions here.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from numba import njit

from curation.core import _blake2b
from curation.core.hashing import string_buffers

T_EN_METACLIP2 = 170_000
T_EN_METACLIP1 = 20_000


def tail_fraction(counts: np.ndarray, t: float) -> float:
    """Share of all matches that fall on tail entries (count < t)."""
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    if total <= 0:
        raise ValueError("tail_fraction needs at least one matched entry (all counts are zero)")
    return float(counts[counts < t].sum()) / total


def threshold_for_fraction(counts: np.ndarray, p: float) -> int:
    """The count t at which the cumulative share of matches is closest to p; always >= 1."""
    counts = np.asarray(counts, dtype=np.int64)
    nonzero = np.sort(counts[counts > 0], kind="stable")
    if nonzero.size == 0:
        raise ValueError("threshold_for_fraction needs at least one non-zero count")
    cumulative = np.cumsum(nonzero) / nonzero.sum()
    return int(nonzero[int(np.argmin(np.abs(cumulative - p)))])


def compute_thresholds(
    nonzero_counts: Mapping[str, np.ndarray], t_en: float | None, p: float | None
) -> dict[str, tuple[float, float]]:
    """{lang: (t, tail fraction)} per section 7, for every language with at least one match:
    English at `t_en` and every language at the tail fraction that gives (rules 7.1-7.4), or
    every language at the tail fraction `p` when it is given (rule 7.5)."""
    if p is None:
        if "en" not in nonzero_counts:
            raise ValueError(
                "no English record matched, so --t-en cannot set the tail fraction; "
                "pass --tail-fraction instead"
            )
        p = tail_fraction(nonzero_counts["en"], t_en)
    result = {}
    for lang, counts in sorted(nonzero_counts.items()):
        t = float(t_en) if lang == "en" and t_en is not None else threshold_for_fraction(counts, p)
        result[lang] = (float(t), p)
    return result


def entry_probabilities(counts: np.ndarray, t: float) -> np.ndarray:
    """prob[e] = 1 for tail entries (count < t), t / count for head entries."""
    if not t > 0:
        raise ValueError(f"threshold t must be positive, got {t!r}")
    counts = np.asarray(counts, dtype=np.float64)
    probs = np.ones_like(counts)
    head = counts >= t
    probs[head] = t / counts[head]
    return probs


def keep_probability(probs: np.ndarray, entry_ids: Sequence[int]) -> float:
    """1 - prod(1 - prob[e]) over the matched entries; 0 when nothing matched.

    The product runs left to right in entry-id order (math.prod), so the float result never
    depends on how a vectorized reduction happens to group the factors.
    """
    if len(entry_ids) == 0:
        return 0.0
    selected = np.asarray(probs, dtype=np.float64)[np.asarray(entry_ids, dtype=np.int64)]
    return 1.0 - math.prod((1.0 - selected).tolist())


def keep_probabilities(probs: np.ndarray, offsets: np.ndarray, entry_ids: np.ndarray, rows):
    """`keep_probability` of each of `rows` of a CSR batch (row r's ids are
    entry_ids[offsets[r]:offsets[r + 1]]): the same floats, the product taken in the same
    left-to-right order."""
    probs = np.asarray(probs, dtype=np.float64)
    entry_ids = np.asarray(entry_ids, dtype=np.int64)
    rows = np.asarray(rows, dtype=np.int64)
    return _keep_probabilities(probs, np.asarray(offsets, dtype=np.int64), entry_ids, rows)


@njit(cache=True, nogil=True)
def _keep_probabilities(probs, offsets, entry_ids, rows):
    out = np.empty(rows.size, dtype=np.float64)
    for k in range(rows.size):
        start, stop = offsets[rows[k]], offsets[rows[k] + 1]
        if start == stop:
            out[k] = 0.0
            continue
        miss = 1.0
        for i in range(start, stop):
            entry = entry_ids[i]
            if entry < 0 or entry >= probs.size:
                raise IndexError("entry id out of range of the language's entries")
            miss *= 1.0 - probs[entry]
        out[k] = 1.0 - miss
    return out


PERSON = b"metaclip-cur"


def _hasher(seed: int, *parts: str):
    digest = hashlib.blake2b(digest_size=8, person=PERSON)
    digest.update(struct.pack("<q", seed))
    _add_parts(digest, parts)
    return digest


def _add_parts(digest, parts) -> None:
    """Each part length-prefixed, so ("ab", "c") and ("a", "bc") hash apart."""
    for part in parts:
        encoded = part.encode("utf-8", "surrogatepass")
        digest.update(struct.pack("<Q", len(encoded)))
        digest.update(encoded)


def _hash64(seed: int, *parts: str) -> int:
    return int.from_bytes(_hasher(seed, *parts).digest(), "little")


def _hash64_many(seed: int, tag: str, *columns) -> np.ndarray:
    """_hash64(seed, tag, *row) for each row of the columns (Arrow string arrays or sequences
    of str), as uint64: the same bytes through BLAKE2b in numba, a column at a time."""
    encoded_tag = tag.encode("utf-8")
    prefix = struct.pack("<qQ", seed, len(encoded_tag)) + encoded_tag
    return _blake2b.hash_rows(prefix, PERSON, *(_utf8_buffers(c) for c in columns))


def _utf8_buffers(column) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, bytes) of strings as `_add_parts` encodes them."""
    if isinstance(column, (pa.Array, pa.ChunkedArray)):
        return string_buffers(column)
    encoded = [part.encode("utf-8", "surrogatepass") for part in column]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(e) for e in encoded], out=offsets[1:])
    return offsets, np.frombuffer(b"".join(encoded), dtype=np.uint8)


def text_choice_key(seed: int, uid: str, text: str) -> int:
    """Among an image's matched texts, the one with the smallest key is chosen."""
    return _hash64(seed, "choose", uid, text)


def keep_uniform(seed: int, uid: str) -> float:
    """The uniform number in [0, 1) an image's keep decision is made with."""
    return (_hash64(seed, "keep", uid) >> 11) * (1.0 / (1 << 53))


def text_choice_keys(seed: int, uids, texts) -> list[int]:
    """`text_choice_key` of each (uid, text), for a batch (Arrow string arrays or sequences)."""
    return _hash64_many(seed, "choose", uids, texts).tolist()


def text_choice_key_array(seed: int, uids, texts) -> np.ndarray:
    """text_choice_keys as uint64."""
    return _hash64_many(seed, "choose", uids, texts)


def keep_uniforms(seed: int, uids) -> np.ndarray:
    """`keep_uniform` of each uid, for a batch (an Arrow string array or a sequence)."""
    keys = _hash64_many(seed, "keep", uids)
    return (keys >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


SMALL_CHOICE = 64  # rows up to which choose_texts hashes with hashlib instead of in a batch


def choose_texts(seed: int, uids, texts, image) -> np.ndarray:
    """Rule 8.2, the one per-image choice: for matched records grouped by image (`image[i]`
    numbers row i's image, the rows of an image in text order), True at the one row chosen for
    each image, the smallest (text_choice_key(seed, uid, text), text). `uids` and `texts` are
    Arrow string arrays or sequences of str."""
    if len(image) <= SMALL_CHOICE and not isinstance(uids, (pa.Array, pa.ChunkedArray)):
        # one image's few candidates (online curation, per sample): the scalar keys, which are
        # the same bits (rule 8.5), without the batch path's fixed cost
        best: dict = {}
        for row, (uid, text, group) in enumerate(zip(uids, texts, image)):
            key = (_hash64(seed, "choose", uid, text), text)
            if group not in best or key < best[group][0]:
                best[group] = (key, row)
        chosen = np.zeros(len(image), dtype=np.bool_)
        chosen[[row for _, row in best.values()]] = True
        return chosen
    image = np.asarray(image, dtype=np.int64)
    chosen = np.zeros(image.size, dtype=np.bool_)
    if not image.size:
        return chosen
    keys = text_choice_key_array(seed, uids, texts)
    order = np.lexsort((keys, image))  # stable: equal keys keep text order
    first = np.ones(order.size, dtype=np.bool_)
    first[1:] = image[order][1:] != image[order][:-1]
    chosen[order[first]] = True
    return chosen


@dataclass(frozen=True)
class Record:
    uid: str
    text: str
    lang: str
    entry_ids: tuple[int, ...]


@dataclass(frozen=True)
class Decision:
    record: Record
    keep_prob: float
    kept: bool


def sample_records(
    records: Iterable[Record], probs_by_lang: Mapping[str, np.ndarray], seed: int
) -> list[Decision]:
    """Section 8 in one process: one matched text per image, then a seeded keep decision.

    Records without matches take no part. The result is sorted by uid, so it does not depend on
    the order of ``records``. This is the reference the Spark job is tested against.
    """
    matched = sorted((r for r in records if r.entry_ids), key=lambda r: (r.uid, r.text))
    starts = [i == 0 or r.uid != matched[i - 1].uid for i, r in enumerate(matched)]
    image = np.cumsum(starts) - 1
    picked = choose_texts(seed, [r.uid for r in matched], [r.text for r in matched], image)
    chosen = {r.uid: r for r, keep in zip(matched, picked) if keep}
    decisions = []
    for uid in sorted(chosen):
        record = chosen[uid]
        prob = keep_probability(probs_by_lang[record.lang], record.entry_ids)
        decisions.append(Decision(record, prob, keep_uniform(seed, uid) < prob))
    return decisions
