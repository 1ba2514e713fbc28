"""The keep/drop decision of every sample, from the shards' analysis (analyze.py), in one place
and in this order; the first rule that applies names the drop reason:

1. `no_image` / `decode_error`: nothing to train on.
2. `blocked_url` / `blocked_domain`, then `blocked_md5` / `blocked_sha256` / `blocked_pdq`
   (`--block-urls`, `--block-hashes`; PDQ within BLOCKLIST_PDQ_BITS).
3. `eval_contamination`: the same bytes as an evaluation image, or a pHash within the
   near-duplicate threshold of one (both images of PDQ quality >= PDQ_MIN_QUALITY).
4. `nsfw`: an NSFW score at or above the threshold.
5. `exact_duplicate` / `near_duplicate`, among the samples no earlier rule dropped, across the
   whole set: samples with the same SHA-256, or pHashes within the threshold (both of PDQ
   quality >= PDQ_MIN_QUALITY), are linked; of each connected group the sample with the
   smallest uid is kept and the others name it in `duplicate_of` (`exact_duplicate` when their
   bytes equal the kept one's). The smallest uid does not depend on shard order or partitioning.

The near-duplicate search compares every pair of hashes (numpy, in blocks): exact, quadratic;
docs/filtering.md gives its measured rate and where that stops scaling.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa

from curation.image_filter import hashes
from curation.image_filter.blocklists import HashList, UrlList
from curation.image_filter.evalsets import EvalImages

DECISION_FIELDS = [
    ("decision", pa.string()),
    ("reason", pa.string()),
    ("duplicate_of", pa.string()),
]


@dataclasses.dataclass(frozen=True)
class Rules:
    nsfw_threshold: float | None  # None: no NSFW rule (the model did not run)
    near_duplicate_bits: int = hashes.DEFAULT_NEAR_DUPLICATE_BITS
    hash_list: HashList = HashList()
    url_list: UrlList = UrlList()


@dataclasses.dataclass
class Decisions:
    table: pa.Table  # the analysis columns + decision, reason, duplicate_of; sorted by uid
    contamination: list[dict]  # {eval_set, eval_key, uid, distance}


def decide(analysis: pa.Table, rules: Rules, evals: EvalImages | None = None) -> Decisions:
    shards, keys = analysis["shard"].to_pylist(), analysis["key"].to_pylist()
    # each sample's identity: its uid, or shard/key for a sample without one
    ids = [
        uid if uid is not None else f"{shard}/{key}"
        for uid, shard, key in zip(analysis["uid"].to_pylist(), shards, keys)
    ]
    order = sorted(range(len(ids)), key=lambda i: (ids[i], shards[i], keys[i]))
    analysis = analysis.take(pa.array(order, pa.int64()))
    ids = [ids[i] for i in order]
    n = analysis.num_rows
    reasons: list[str | None] = [None] * n
    duplicate_of: list[str | None] = [None] * n
    errors = analysis["error"].to_pylist()
    sha = analysis["sha256"].to_pylist()
    md5 = analysis["md5"].to_pylist()
    pdq = analysis["pdq"].to_pylist()
    quality = np.array([q if q is not None else -1 for q in analysis["pdq_quality"].to_pylist()])
    pdq_words = hashes.hex_to_words([p or "0" * 64 for p in pdq])
    words = hashes.hex_to_words([p or "0" * 64 for p in analysis["phash"].to_pylist()])
    has_hash = np.array([p is not None for p in pdq])

    def drop(rows, reason: str) -> None:
        for i in rows:
            if reasons[i] is None:
                reasons[i] = reason

    for i, e in enumerate(errors):
        if e:
            reasons[i] = e.split(":", 1)[0]
    for i, url in enumerate(analysis["url"].to_pylist()):
        reason = rules.url_list.reason(url)
        if reason:
            drop([i], reason)
    drop([i for i, h in enumerate(md5) if h in rules.hash_list.md5], "blocked_md5")
    drop([i for i, h in enumerate(sha) if h in rules.hash_list.sha256], "blocked_sha256")
    if rules.hash_list.pdq:
        hashed = np.flatnonzero(has_hash)
        pairs = hashes.pairs_within(
            pdq_words[hashed], rules.hash_list.pdq_words(), hashes.BLOCKLIST_PDQ_BITS
        )
        drop(sorted({int(hashed[i]) for i, _, _ in pairs}), "blocked_pdq")

    contamination = _contamination(ids, sha, words, quality, rules, evals)
    drop(sorted({row.pop("_row") for row in contamination}), "eval_contamination")

    if rules.nsfw_threshold is not None:
        scores = analysis["nsfw_score"].to_pylist()
        flagged = [i for i, s in enumerate(scores) if s is not None and s >= rules.nsfw_threshold]
        drop(flagged, "nsfw")

    _deduplicate(ids, sha, words, quality, reasons, duplicate_of, rules.near_duplicate_bits)

    table = analysis
    table = table.append_column(
        "decision", pa.array(["drop" if r else "keep" for r in reasons], pa.string())
    )
    table = table.append_column("reason", pa.array(reasons, pa.string()))
    table = table.append_column("duplicate_of", pa.array(duplicate_of, pa.string()))
    return Decisions(table, contamination)


def _contamination(ids, sha, words, quality, rules: Rules, evals: EvalImages | None) -> list:
    if evals is None or not len(evals):
        return []
    found = {}
    eval_sha = {}
    for j, digest in enumerate(evals.sha256):
        eval_sha.setdefault(digest, j)
    for i, digest in enumerate(sha):
        if digest in eval_sha:
            found[i] = (eval_sha[digest], 0)
    ours = np.flatnonzero(quality >= hashes.PDQ_MIN_QUALITY)
    theirs = np.flatnonzero(np.array(evals.quality) >= hashes.PDQ_MIN_QUALITY)
    if len(ours) and len(theirs):
        eval_words = evals.phash_words()[theirs]
        for i, j, distance in hashes.pairs_within(
            words[ours], eval_words, rules.near_duplicate_bits
        ):
            row, target = int(ours[i]), int(theirs[j])
            if row not in found or distance < found[row][1]:
                found[row] = (target, distance)
    return [
        {
            "eval_set": evals.names[j],
            "eval_key": evals.keys[j],
            "uid": ids[i],
            "distance": int(d),
            "_row": i,
        }
        for i, (j, d) in sorted(found.items())
    ]


def _deduplicate(ids, sha, words, quality, reasons, duplicate_of, bits: int) -> None:
    """Union-find over the surviving rows (ids sorted ascending, so the smallest index of a
    group is its smallest uid): same bytes, or pHashes within `bits` (both of enough PDQ
    quality)."""
    alive = [i for i in range(len(ids)) if reasons[i] is None]
    parent = {i: i for i in alive}

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(a: int, b: int) -> None:
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    first_with = {}
    for i in alive:
        if sha[i] in first_with:
            union(first_with[sha[i]], i)
        else:
            first_with[sha[i]] = i
    rows = np.array([i for i in alive if quality[i] >= hashes.PDQ_MIN_QUALITY], dtype=np.int64)
    if len(rows) > 1:
        for i, j, _ in hashes.pairs_within(words[rows], words[rows], bits, same=True):
            union(int(rows[i]), int(rows[j]))
    for i in alive:
        kept = root(i)
        if kept != i:
            reasons[i] = "exact_duplicate" if sha[i] == sha[kept] else "near_duplicate"
            duplicate_of[i] = ids[kept]
