"""benchmarks/release_style_curate.py, the curation benchmark's baseline, does what the MetaCLIP 2
release does on real captions: its matches are the reference matcher's, English keeps t_en, and
every kept image carries the release's keep probability 1 - prod(1 - t / max(count, t))."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.identity import image_uid
from curation.reference_metaclip import ReferenceMatcher
from tests.curation_fixtures import caption_rows, wit_entries, write_metadata

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
pytest.importorskip("ahocorasick")

import release_style_curate as baseline  # noqa: E402


def test_baseline_matches_counts_and_keep_probabilities(tmp_path):
    rows = caption_rows(1500, ["da", "ja"])
    rows += rows[:50]  # exact duplicates count once, as distinct (uid, text) in the release
    entries = {"en": ["dog", "man", "woman", "the beach", "a street"]}
    for lang in ("da", "ja"):
        entries[lang] = wit_entries([r[2] for r in rows if r[3] == lang], lang)
    entries = write_metadata(tmp_path / "metadata", entries)
    (tmp_path / "input").mkdir()
    table = {
        "uid": [image_uid(url, page) for url, page, _, _ in rows],
        "url": [r[0] for r in rows],
        "text": [r[2] for r in rows],
        "lang": [r[3] for r in rows],
    }
    pq.write_table(pa.table(table), tmp_path / "input" / "part-0.parquet")
    result = baseline.curate(
        str(tmp_path / "input"), str(tmp_path / "metadata"), str(tmp_path / "out.parquet"), 20
    )
    matchers = {lang: ReferenceMatcher(items) for lang, items in entries.items()}
    distinct = {(u, t): lang for u, t, lang in zip(table["uid"], table["text"], table["lang"])}
    counts = {lang: np.zeros(len(items), dtype=np.int64) for lang, items in entries.items()}
    matched = 0
    for (_, text), lang in distinct.items():
        ids = matchers[lang].match(text.strip())
        matched += bool(ids)
        counts[lang][ids] += 1
    assert result["records"] == len(rows) and result["matched_records"] == matched > 100
    assert result["thresholds"]["en"] == 20
    kept = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert 0 < len(kept) < len({u for u, _ in distinct})
    p = baseline.t_to_p(counts["en"].astype(np.uint64), 20)
    for row in kept[:200]:
        lang = row["lang"]
        t = 20 if lang == "en" else baseline.p_to_t(counts[lang].astype(np.uint64), p)
        probs = (t / np.maximum(counts[lang], t)).astype(np.float32)
        ids = matchers[lang].match(row["text"].strip())
        assert row["keep_prob"] == pytest.approx(1 - np.prod(1 - probs[ids]), rel=1e-6)
