"""Online curation: MetaCLIP 2's training-time balancing, seeded (docs/online-curation.md).

The trainer reads pool shards (every matched image, with all its matched texts as candidates)
and, per epoch e and sample, applies section 8 of docs/semantics.md with an epoch seed: the
candidate with the smallest `text_choice_key(seed_e, uid, text)` is chosen, and kept when
`keep_uniform(seed_e, uid) < keep_probability(prob[lang], entry_ids)`. Thresholds and entry
probabilities come from the run's `entry_counts/` through the same functions the curation job
uses (section 7). With `fixed_epoch` every epoch uses the run's own seed: one pass keeps exactly
the run's `curated/`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow.dataset as ds

from curation.balance import (
    _hash64,
    choose_texts,
    compute_thresholds,
    entry_probabilities,
    keep_probability,
    keep_uniform,
)
from curation.core import tables
from curation.core.jobs import OnlineCurationError


@dataclass(frozen=True)
class Candidate:
    text: str
    lang: str
    entry_ids: tuple[int, ...]


def parse_candidates(value) -> list[Candidate]:
    """A pool sample's `candidates` (a JSON string as img2dataset stores it, or a list)."""
    items = json.loads(value) if isinstance(value, str) else value
    return [Candidate(c["text"], c["lang"], tuple(int(e) for e in c["entry_ids"])) for c in items]


def _read_json(uri: str) -> dict | None:
    try:
        text = tables.read_text(uri)
    except OSError:
        return None
    return None if text is None else json.loads(text)


def _partition_langs(counts_uri: str) -> list[str]:
    try:
        return tables.partition_values(counts_uri, "lang")
    except FileNotFoundError:
        return []


class OnlineCuration:
    """Per-language entry probabilities of one curation run, and the per-epoch decisions."""

    def __init__(
        self,
        run_dir: str,
        t_en: float | None = None,
        tail_fraction: float | None = None,
        seed: int | None = None,
        fixed_epoch: bool = False,
    ):
        self.run_dir = run_dir.rstrip("/")
        run = _read_json(f"{self.run_dir}/run.json")
        if run is None:
            raise OnlineCurationError(f"{self.run_dir} has no run.json: not a curation run")
        config = run.get("config", {})
        counts_uri = f"{self.run_dir}/entry_counts"
        langs = _partition_langs(counts_uri)
        if not langs:
            raise OnlineCurationError(f"{self.run_dir} has no entry_counts/ table")
        if t_en is None and tail_fraction is None:
            t_en, tail_fraction = config.get("t_en"), config.get("tail_fraction")
        self.seed = int(config.get("seed", 0) if seed is None else seed)
        self.fixed_epoch = fixed_epoch
        counts = {}
        for lang in langs:
            table = tables.read_partition(counts_uri, lang, ["entry_id", "count"])
            ids = table.column("entry_id").to_numpy()
            array = np.zeros(int(ids.max()) + 1 if ids.size else 0, dtype=np.int64)
            array[ids] = table.column("count").to_numpy()
            counts[lang] = array
        nonzero = {lang: c[c > 0] for lang, c in counts.items() if (c > 0).any()}
        if tail_fraction is None and "en" not in nonzero:
            raise OnlineCurationError(
                f"--t-en needs English entries, and {counts_uri} has no English match; "
                "pass --tail-fraction"
            )
        self.thresholds = compute_thresholds(nonzero, t_en, tail_fraction)
        self.t_en, self.tail_fraction = t_en, tail_fraction
        self.probs = {
            lang: entry_probabilities(counts[lang], t) for lang, (t, _) in self.thresholds.items()
        }

    def identity(self) -> dict:
        """What a checkpoint records, so a resume with another threshold is refused."""
        return {
            "run_dir": self.run_dir,
            "t_en": self.t_en,
            "tail_fraction": self.tail_fraction,
            "seed": self.seed,
            "fixed_epoch": self.fixed_epoch,
        }

    def epoch_seed(self, epoch: int) -> int:
        if self.fixed_epoch:
            return self.seed
        return _hash64(self.seed, "epoch", str(epoch)) >> 1

    def keep_prob(self, candidate: Candidate) -> float:
        probs = self.probs.get(candidate.lang)
        if probs is None:
            return 0.0  # a language without any match in this run
        return keep_probability(probs, candidate.entry_ids)

    def decide(self, uid: str, candidates: Sequence[Candidate], epoch: int):
        """(chosen candidate, its keep probability, kept?) of one pool sample in one epoch."""
        seed = self.epoch_seed(epoch)
        texts = [c.text for c in candidates]
        picked = choose_texts(seed, [uid] * len(texts), texts, [0] * len(texts))
        chosen = candidates[int(picked.argmax())]
        prob = self.keep_prob(chosen)
        return chosen, prob, keep_uniform(seed, uid) < prob

    def expected_kept(self, pool: Iterable[tuple[str, Sequence[Candidate]]]) -> float:
        """Σ over images of the mean keep probability of its candidates: the expected number of
        samples an epoch keeps (each candidate is equally likely to be an epoch's choice)."""
        return float(
            sum(np.mean([self.keep_prob(c) for c in candidates]) for _, candidates in pool)
        )


def matched_images(
    run_dir: str, languages: Sequence[str] | None = None
) -> list[tuple[str, str, list[Candidate]]]:
    """(uid, url, candidates) of every image with a matched text in a run's `matches/`, in uid
    order: its smallest url and its distinct matched texts in text order. What pool shards hold
    (`curation.shards.export.read_pool`) and what the trainer's epoch length is computed from."""
    dataset = tables.dataset(f"{run_dir.rstrip('/')}/matches")
    row_filter = ds.field("lang").isin(list(languages)) if languages else None
    columns = ["uid", "url", "text", "lang", "entry_ids"]
    table = dataset.to_table(columns=columns, filter=row_filter)
    by_uid: dict[str, tuple[str, dict[str, Candidate]]] = {}
    for uid, url, text, lang, ids in zip(
        *(table.column(c).to_pylist() for c in columns), strict=True
    ):
        if not ids or text is None or url is None:
            continue
        known = by_uid.get(uid)
        texts = known[1] if known else {}
        texts[text] = Candidate(text, str(lang), tuple(ids))
        by_uid[uid] = (min(known[0], url) if known else url, texts)
    return [(uid, url, [c[t] for t in sorted(c)]) for uid, (url, c) in sorted(by_uid.items())]


def pool_from_matches(run_dir: str) -> list[tuple[str, list[Candidate]]]:
    """(uid, candidates) of every matched image of a run (`matched_images` without urls)."""
    return [(uid, candidates) for uid, _, candidates in matched_images(run_dir)]
