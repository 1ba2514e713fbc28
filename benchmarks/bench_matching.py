"""Matching throughput of EntryMatcher.match_many vs. the reference-style baseline, on one core.

Baseline: what the MetaCLIP release does — the reference spacing, then a pure-Python loop over
pyahocorasick's `iter` collecting entry ids. Same entries, same texts; answers are compared.
Also: automaton build time and resident memory for 500k entries (in a fresh process).

    .venv/bin/python benchmarks/bench_matching.py [--texts 200000] [--build-entries 500000]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from curation.core import samples
from curation.matching import EntryMatcher
from curation.reference_metaclip import PUNCTS_TO_WRAP, ReferenceMatcher, reference_no_space
from curation.text import is_no_space_char

SHARED_CC3M = Path(__file__).resolve().parents[2] / "shared" / "data" / "cc3m_val_10k.tsv"


def captions() -> list[str]:
    path = SHARED_CC3M if SHARED_CC3M.exists() else samples.SAMPLE_DIR / "cc3m_val_2k.tsv"
    return [caption for caption, _ in samples.cc3m_pairs(path)]


def ngram_counts(texts: list[str], max_n: int) -> collections.Counter:
    counts = collections.Counter()
    for text in texts:
        words = text.split()
        for n in range(1, max_n + 1):
            counts.update(" ".join(words[i : i + n]) for i in range(len(words) - n + 1))
    return counts


def reference_compatible(entry: str) -> bool:
    """Entries on which the reference rules are not defective, so both answer the same."""
    return (
        entry == " ".join(entry.split())
        and not any(p in entry for p in PUNCTS_TO_WRAP)
        and all(reference_no_space(ch) == is_no_space_char(ch) for ch in (entry[0], entry[-1]))
    )


def time_it(fn, texts):
    """CPU seconds of this (single-threaded, one-core) process: robust to other load."""
    started = time.process_time()
    result = fn(texts)
    return result, time.process_time() - started


def build_probe(n_entries: int) -> dict:
    """Run in a fresh process: build an automaton over n real entries, report time and memory."""
    import resource

    import psutil
    from wordfreq import top_n_list

    entries = set(samples.wordnet_lemmas())
    entries.update(ngram_counts(captions(), 4))
    for lang in ("en", "de", "fr", "es"):
        if len(entries) >= n_entries:
            break
        entries.update(w for w in top_n_list(lang, n_entries) if w.strip())
    entries = sorted(entries)[:n_entries]
    process = psutil.Process()
    rss_before = process.memory_info().rss
    started = time.process_time()
    matcher = EntryMatcher(entries)
    build_s = time.process_time() - started
    rss_after = process.memory_info().rss
    return {
        "entries": len(matcher),
        "build_s": build_s,
        "rss_increase_mib": (rss_after - rss_before) / 2**20,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=200_000, help="texts to match")
    parser.add_argument("--build-entries", type=int, default=500_000, help="entries for build")
    parser.add_argument("--probe", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe:
        print(json.dumps(build_probe(args.probe)))
        return 0
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core

    base = captions()
    counts = ngram_counts(base, 3)
    entries = set(samples.wordnet_lemmas())
    entries.update(g for g, c in counts.items() if c >= 2)
    entries = sorted(e for e in entries if reference_compatible(e))
    texts = (base * (args.texts // len(base) + 1))[: args.texts]
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cpus, python {platform.python_version()}"
    )
    print(f"entries: {len(entries):,} (WordNet + CC3M n-grams seen twice); texts: {len(texts):,}")

    started = time.process_time()
    matcher = EntryMatcher(entries)
    ours_build = time.process_time() - started
    started = time.process_time()
    reference = ReferenceMatcher(entries)
    ref_build = time.process_time() - started

    _, compile_s = time_it(matcher.match_many, texts[:10])  # numba kernel: compiled or cached
    print(f"first call (kernel compile or cache load): {compile_s:.2f}s")
    ours, ours_s = time_it(matcher.match_many, texts)
    theirs, ref_s = time_it(lambda ts: [reference.match(t) for t in ts], texts)
    mismatches = sum(a != b for a, b in zip(ours, theirs))
    matches = sum(map(len, ours))
    print(
        f"matches found: {matches:,} ({matches / len(texts):.1f} per text); "
        f"answers differing from baseline: {mismatches}"
    )
    print(f"build (CPU s): EntryMatcher {ours_build:.2f}s, pyahocorasick {ref_build:.2f}s")
    print(f"EntryMatcher.match_many: {len(texts) / ours_s:,.0f} texts per CPU-second (one core)")
    print(f"baseline (pyahocorasick iter loop): {len(texts) / ref_s:,.0f} texts per CPU-second")
    print(f"ratio: {ref_s / ours_s:.2f}x")

    probe = subprocess.run(
        [sys.executable, __file__, "--probe", str(args.build_entries)],
        capture_output=True,
        text=True,
        check=True,
    )
    built = json.loads(probe.stdout)
    print(
        f"build {built['entries']:,} entries: {built['build_s']:.2f}s, "
        f"+{built['rss_increase_mib']:.0f} MiB resident (peak process RSS "
        f"{built['peak_rss_mib']:.0f} MiB)"
    )
    return 1 if mismatches else 0


if __name__ == "__main__":
    raise SystemExit(main())
