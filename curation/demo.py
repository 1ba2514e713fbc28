"""`make demo`: run every pipeline stage that exists on the embedded sample, say which do not."""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np

from curation import samples
from curation.balance import (
    Record,
    entry_probabilities,
    sample_records,
    tail_fraction,
    threshold_for_fraction,
)
from curation.matching import EntryMatcher

PLANNED_STAGES = [
    ("metadata", "jobs/build_metadata.py", "issue 4"),
    ("alt-text", "jobs/extract_alt_text.py", "issue 5"),
    ("curate", "jobs/curate.py", "issue 6"),
    ("shards", "jobs/export_shards.py", "issue 7"),
    ("train", "trainer/train.py", "issue 8"),
    ("report", "curation/report.py", "issue 9"),
]


def core_demo(output: Path, t_en: int, seed: int) -> dict:
    """Match the sample's English captions against WordNet, balance, and summarize."""
    entries = samples.wordnet_lemmas()
    pairs = list(samples.cc3m_pairs())
    pairs += [(r["caption_reference_description"], r["image_url"]) for r in samples.wit_rows("en")]
    started = time.perf_counter()
    matcher = EntryMatcher(entries)
    build_s = time.perf_counter() - started
    matches = matcher.match_many(text for text, _ in pairs)
    counts = np.zeros(len(entries), dtype=np.int64)
    for ids in matches:
        counts[ids] += 1
    probs = entry_probabilities(counts, t_en)
    records = [Record(url, text, "en", tuple(ids)) for (text, url), ids in zip(pairs, matches)]
    decisions = sample_records(records, {"en": probs}, seed)
    top = [(entries[i], int(counts[i])) for i in np.argsort(-counts, kind="stable")[:10]]
    summary = {
        "entries": len(entries),
        "records": len(pairs),
        "matched_records": sum(1 for ids in matches if ids),
        "automaton_build_s": round(build_s, 3),
        "t_en": t_en,
        "tail_fraction": tail_fraction(counts, t_en),
        "t_for_that_fraction": threshold_for_fraction(counts, tail_fraction(counts, t_en)),
        "kept_images": sum(d.kept for d in decisions),
        "candidate_images": len(decisions),
        "top_entries": top,
    }
    output.mkdir(parents=True, exist_ok=True)
    (output / "core_summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False))
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", type=Path, default=Path("out/demo"), help="output folder")
    parser.add_argument("--t-en", type=int, default=20, help="English threshold (sample is tiny)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    args = parser.parse_args(argv)
    root = Path(__file__).resolve().parents[1]

    print("== curation core (normalize, match, balance) on the embedded sample")
    summary = core_demo(args.output, args.t_en, args.seed)
    print(
        f"   {summary['records']} English alt-texts, {summary['entries']} WordNet entries: "
        f"{summary['matched_records']} matched; t_en={summary['t_en']} keeps "
        f"{summary['kept_images']} of {summary['candidate_images']} images "
        f"(tail fraction {summary['tail_fraction']:.3f})"
    )
    print("   top entries: " + ", ".join(f"{e!r}={c}" for e, c in summary["top_entries"][:6]))
    print(f"   summary: {args.output / 'core_summary.json'}")
    counts = Counter()
    for stage, path, issue in PLANNED_STAGES:
        if (root / path).exists():
            counts["built"] += 1
            continue
        counts["missing"] += 1
        print(f"== {stage}: not built yet ({path}, {issue})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
