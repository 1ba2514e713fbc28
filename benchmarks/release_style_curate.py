"""The baseline of benchmarks/bench_curate.py: a single-process curation in the style of the
MetaCLIP 2 release's three stages, on the same input and metadata as jobs/curate.py.

1. substring matching: one pyahocorasick automaton per language over the release's spaced
   entries, `iter` over each spaced alt-text in Python (`curation.reference_metaclip`);
2. counts: numpy `bincount` of the matched entry ids per language; thresholds: English's tail
   fraction at `--t-en`, then the release's `p_to_t` for every other language;
3. per image one text (the smallest hash of seed, uid, text), kept with probability
   max(min(1, t / count)) over its entries, drawn from a generator seeded per record.

Everything is held in memory, as the release's scripts do. Not a reimplementation of our
semantics (see the deliberate differences in docs/semantics.md): the cost a user of the
release's scripts would pay, which is what the benchmark compares against.

    python benchmarks/release_style_curate.py INPUT_DIR METADATA_DIR OUT.parquet [--t-en 2000]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from curation.reference_metaclip import ReferenceMatcher, p_to_t  # noqa: E402


def load_metadata(path: str) -> dict[str, list[str]]:
    table = ds.dataset(path, format="parquet", partitioning="hive").to_table(
        columns=["lang", "entry_id", "entry"]
    )
    entries: dict[str, dict[int, str]] = {}
    for lang, entry_id, entry in zip(*(table.column(c).to_pylist() for c in table.column_names)):
        entries.setdefault(lang, {})[entry_id] = entry
    return {lang: [e[i] for i in sorted(e)] for lang, e in entries.items()}


def curate(input_dir: str, metadata: str, out: str, t_en: float, seed: int = 0) -> dict:
    entries = load_metadata(metadata)
    matchers = {lang: ReferenceMatcher(items) for lang, items in entries.items()}
    records = ds.dataset(input_dir, format="parquet").to_table(
        columns=["uid", "url", "text", "lang"]
    )
    uids, urls, texts, langs = (records.column(c).to_pylist() for c in records.column_names)

    # stage 1: matching
    matched = []
    for text, lang in zip(texts, langs):
        matcher = matchers.get(lang)
        matched.append(matcher.match(text) if matcher is not None and text else [])

    # stage 2: counts and thresholds
    counts = {lang: np.zeros(len(items), dtype=np.int64) for lang, items in entries.items()}
    for ids, lang in zip(matched, langs):
        if ids:
            np.add.at(counts[lang], ids, 1)
    en = counts["en"]
    tail = np.minimum(en, t_en).sum() / max(1, en.sum())
    thresholds = {"en": t_en}
    for lang, c in counts.items():
        if lang != "en" and c.sum():
            thresholds[lang] = max(1, p_to_t(c, tail))

    # stage 3: one text per image, then the keep draw
    chosen: dict[str, tuple[str, int]] = {}
    for i, (uid, text) in enumerate(zip(uids, texts)):
        if not matched[i]:
            continue
        key = hashlib.sha1(f"{seed}\t{uid}\t{text}".encode()).hexdigest()
        if uid not in chosen or key < chosen[uid][0]:
            chosen[uid] = (key, i)
    kept = {"uid": [], "url": [], "text": [], "lang": [], "keep_prob": []}
    for key, i in chosen.values():
        lang, ids = langs[i], matched[i]
        prob = float(min(1.0, max(thresholds[lang] / counts[lang][ids].min(), 0.0)))
        if np.random.default_rng(int(key[:15], 16)).random() < prob:
            for name, value in (
                ("uid", uids[i]), ("url", urls[i]), ("text", texts[i]), ("lang", lang),
                ("keep_prob", prob),
            ):  # fmt: skip
                kept[name].append(value)
    import pyarrow as pa

    pq.write_table(pa.table(kept), out)
    return {
        "records": len(texts),
        "matched_records": sum(1 for ids in matched if ids),
        "curated_records": len(kept["uid"]),
        "thresholds": {lang: float(t) for lang, t in sorted(thresholds.items())},
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
