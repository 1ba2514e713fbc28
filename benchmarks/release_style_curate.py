"""The baseline of benchmarks/bench_curate.py: what the MetaCLIP 2 release's curation does per
record (facebookresearch/MetaCLIP, `metaclip/curation/curate.py` and `substr_matching.py`), in
one process, on the same input and metadata as jobs/curate.py, and nothing more.

1. `count_per_shard`: the alt-texts grouped per image (uid), each distinct (uid, text) once;
   per text `txt.strip()`, `spacing`, pyahocorasick `iter` over the language's automaton of
   spaced entries (values `(entry_id, key)`), the entry ids through a `set` into a list; texts
   without a match are dropped; `entry_counts[lang][ids] += 1` (numpy, per text).
2. `global_count`: `t_to_p` of English's counts at `--t-en`, `p_to_t` for every other language,
   `count_to_prob` per language.
3. `curate`: per image `random.choice` of one matched text, keep probability
   `1 - prod(1 - entry_probs[ids])`, kept unless `prob < random.random()`.

On purpose, the same as the release where it differs from this project's semantics
(docs/semantics.md, "Deliberate differences"): its matching rules (D1-D3), `p_to_t` with zero
counts (D4), and unseeded draws (D6; `random` is seeded once here, at no per-record cost, so a
run can be repeated). Records whose language has no metadata do not match, as the release's
`other`. Everything stays in memory, as the release's per-shard JSON indexes do per shard, with
the cyclic garbage collector off (the release's heaps are a shard's: `curate` says why).

    python benchmarks/release_style_curate.py INPUT_DIR METADATA_DIR OUT.parquet [--t-en 2000]
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import sys
from pathlib import Path

import ahocorasick
import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from curation.reference_metaclip import spaced_entry, spacing  # noqa: E402


def load_metadata(path: str) -> dict[str, list[str]]:
    table = ds.dataset(path, format="parquet", partitioning="hive").to_table(
        columns=["lang", "entry_id", "entry"]
    )
    entries: dict[str, dict[int, str]] = {}
    for lang, entry_id, entry in zip(*(table.column(c).to_pylist() for c in table.column_names)):
        entries.setdefault(lang, {})[entry_id] = entry
    return {lang: [e[i] for i in sorted(e)] for lang, e in entries.items()}


def initialize_automaton(entries: list[str]):
    """The release's `initialize_automaton(get_spaced_metadata(entries))`."""
    automaton = ahocorasick.Automaton()
    for idx, entry in enumerate(entries):
        key = spaced_entry(entry)
        automaton.add_word(key, (idx, key))
    automaton.make_automaton()
    return automaton


def substr_match(automaton, txt: str) -> list[int]:
    """The release's `substr_match(..., matching_fn="iter")`."""
    matched_entry_ids = set()
    for _, (entry_id, _) in automaton.iter(spacing(txt)):
        matched_entry_ids.add(entry_id)
    return list(matched_entry_ids)


def t_to_p(entry_counts: np.ndarray, t: float) -> float:
    return float(entry_counts[entry_counts < t].sum() / entry_counts.sum())


def p_to_t(entry_counts: np.ndarray, p: float):
    counts = np.sort(entry_counts)
    portion = np.cumsum(counts) / counts.sum()
    return counts[(np.abs(portion - p)).argmin()]


def count_to_prob(entry_count: np.ndarray, t: float) -> np.ndarray:
    p_entry_counts = np.array(entry_count)
    p_entry_counts[p_entry_counts < t] = t
    return t / p_entry_counts


def curate(input_dir: str, metadata: str, out: str, t_en: float, seed: int = 0) -> dict:
    # The release works shard by shard (a few thousand images per JSON file), so its heap stays
    # small and Python's cyclic garbage collector costs it little. Held whole in one process,
    # millions of dicts and lists would make every collection walk them all (~30% more CPU at
    # 3M records, growing with size): a cost of this single-process form, not of the release.
    gc.disable()
    random.seed(seed)
    entries = load_metadata(metadata)
    automata = {lang: initialize_automaton(items) for lang, items in entries.items()}
    records = ds.dataset(input_dir, format="parquet").to_table(
        columns=["uid", "url", "text", "lang"]
    )
    uids, urls, texts, langs = (records.column(c).to_pylist() for c in records.column_names)

    # stage 1: per image its distinct texts, matched; entry counts per text
    uuid_to_text: dict[str, dict[str, tuple[str, str]]] = {}
    for uid, url, text, lang in zip(uids, urls, texts, langs):
        if text is not None:
            uuid_to_text.setdefault(uid, {}).setdefault(text, (lang, url))
    entry_counts = {lang: np.zeros(len(items), dtype=np.uint64) for lang, items in entries.items()}
    text_index: dict[str, list] = {}
    for uid, by_text in uuid_to_text.items():
        matched = []
        for txt, (lang, url) in by_text.items():
            automaton = automata.get(lang)
            if automaton is None:
                continue
            ids = substr_match(automaton, txt.strip())
            if not ids:
                continue
            matched.append([txt, lang, ids, url])
            entry_counts[lang][ids] += 1
        if matched:
            text_index[uid] = matched

    # stage 2: thresholds and entry probabilities
    p = t_to_p(entry_counts["en"], t_en)
    thresholds, entry_probs = {}, {}
    for lang, counts in entry_counts.items():
        if not counts.sum():
            continue
        t = t_en if lang == "en" else p_to_t(counts, p)
        thresholds[lang] = float(t)
        entry_probs[lang] = count_to_prob(counts, t).astype(np.float32)

    # stage 3: one text per image, then the keep draw
    kept = {"uid": [], "url": [], "text": [], "lang": [], "keep_prob": []}
    for uid, txt_tuples in text_index.items():
        txt, lang, ids, url = random.choice(txt_tuples)
        prob = 1.0 - np.prod(1.0 - entry_probs[lang][ids])
        if prob < random.random():
            continue
        for name, value in zip(kept, (uid, url, txt, lang, float(prob)), strict=True):
            kept[name].append(value)
    pq.write_table(pa.table(kept), out)
    return {
        "records": len(texts),
        "matched_records": sum(len(v) for v in text_index.values()),
        "curated_records": len(kept["uid"]),
        "thresholds": dict(sorted(thresholds.items())),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("input_dir")
    p.add_argument("metadata")
    p.add_argument("out")
    p.add_argument("--t-en", type=float, default=2000)
    args = p.parse_args(argv)
    print(json.dumps(curate(args.input_dir, args.metadata, args.out, args.t_en)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
