import os
import random
import subprocess
import sys
from collections import defaultdict

import numpy as np
import pytest

from curation.balance import (
    Record,
    entry_probabilities,
    keep_probabilities,
    keep_probability,
    keep_uniform,
    keep_uniforms,
    sample_records,
    tail_fraction,
    text_choice_key,
    text_choice_keys,
    threshold_for_fraction,
)
from curation.reference_metaclip import p_to_t

COUNTS = np.array([1, 2, 3, 4, 10, 20, 60])  # total 100


def test_tail_fraction_sums_counts_strictly_below_t():
    assert tail_fraction(COUNTS, 10) == pytest.approx(10 / 100)
    assert tail_fraction(COUNTS, 11) == pytest.approx(20 / 100)
    assert tail_fraction(COUNTS, 61) == 1.0
    assert tail_fraction(COUNTS, 1) == 0.0


def test_tail_fraction_ignores_zeros_and_rejects_no_matches():
    assert tail_fraction(np.array([0, 0, 5, 5]), 6) == 1.0
    with pytest.raises(ValueError, match="all counts are zero"):
        tail_fraction(np.zeros(4, dtype=int), 10)


def test_threshold_for_fraction_takes_the_count_at_the_closest_cumulative_share():
    # cumulative shares: .01 .03 .06 .10 .20 .40 1.0
    assert threshold_for_fraction(COUNTS, 0.10) == 4
    assert threshold_for_fraction(COUNTS, 0.16) == 10
    assert threshold_for_fraction(COUNTS, 0.35) == 20
    assert threshold_for_fraction(COUNTS, 0.9) == 60
    assert threshold_for_fraction(COUNTS, 0.0) == 1
    assert threshold_for_fraction(COUNTS[::-1].copy(), 0.10) == 4, "input order does not matter"


def test_threshold_for_fraction_takes_the_first_index_on_ties():
    # shares .25 .5 .75 1.0 ; p = .375 is equally far from .25 and .5
    assert threshold_for_fraction(np.array([1, 1, 1, 1]), 0.375) == 1
    assert threshold_for_fraction(np.array([1, 3]), 0.625) == 1  # shares .25, 1.0: .375 both ways


def test_threshold_for_fraction_excludes_zeros_and_never_returns_zero():
    counts = np.array([0] * 500 + [1, 1, 2, 50])
    assert p_to_t(counts, 0.005) == 0, "the reference silently returns t = 0 here"
    assert threshold_for_fraction(counts, 0.005) == 1
    rng = np.random.default_rng(0)
    for _ in range(200):
        counts = rng.integers(0, 3, size=rng.integers(1, 40)) * rng.integers(0, 2, size=1)
        counts[rng.integers(0, counts.size)] += 1
        assert threshold_for_fraction(counts, float(rng.random())) >= 1


def test_threshold_for_fraction_rejects_a_language_without_matches():
    with pytest.raises(ValueError, match="non-zero"):
        threshold_for_fraction(np.array([0, 0]), 0.5)


def test_threshold_agrees_with_reference_when_there_are_no_zeros():
    rng = np.random.default_rng(1)
    for _ in range(100):
        counts = rng.zipf(1.6, size=300).clip(max=10**6)
        p = float(rng.random())
        assert threshold_for_fraction(counts, p) == p_to_t(counts, p)


def test_t_en_round_trip_through_tail_fraction():
    rng = np.random.default_rng(2)
    counts = rng.zipf(1.5, size=20000).clip(max=10**7)
    t = 500
    p = tail_fraction(counts, t)
    t_back = threshold_for_fraction(counts, p)
    assert tail_fraction(counts, t_back + 1) == pytest.approx(p, abs=0.01)


def test_entry_probabilities():
    probs = entry_probabilities(np.array([0, 1, 9, 10, 20, 1000]), 10)
    np.testing.assert_allclose(probs, [1, 1, 1, 1, 0.5, 0.01])
    with pytest.raises(ValueError, match="positive"):
        entry_probabilities(COUNTS, 0)


def test_keep_probability_is_one_minus_product_of_misses():
    probs = np.array([1.0, 0.5, 0.2, 0.1])
    assert keep_probability(probs, [1]) == pytest.approx(0.5)
    assert keep_probability(probs, [1, 2]) == pytest.approx(1 - 0.5 * 0.8)
    assert keep_probability(probs, [1, 2, 3]) == pytest.approx(1 - 0.5 * 0.8 * 0.9)
    assert keep_probability(probs, [0, 3]) == 1.0
    assert keep_probability(probs, []) == 0.0


def test_batch_forms_give_the_scalar_functions_bits(cc3m_captions):
    """The Spark job uses the batch forms; the reference (`sample_records`) the scalar ones."""
    rng = np.random.default_rng(0)
    probs = entry_probabilities(rng.integers(1, 500, 3000), 40)
    lists = [sorted(rng.choice(3000, rng.integers(0, 12), replace=False)) for _ in range(2000)]
    offsets = np.cumsum([0] + [len(ids) for ids in lists])
    values = np.concatenate([np.asarray(ids, dtype=np.int64) for ids in lists])
    rows = np.arange(1, 2000, 3)  # a subset of the rows, as one language of a mixed batch
    got = keep_probabilities(probs, offsets, values, rows)
    assert got.tolist() == [keep_probability(probs, lists[r]) for r in rows]  # exact, not approx
    with pytest.raises(IndexError):
        keep_probabilities(probs[:10], offsets, values, rows)
    texts = cc3m_captions[:2000] + ["naïve café ☕", "", "\ud800 lone surrogate"]
    uids = [f"{i:016x}" for i in range(len(texts))]
    assert text_choice_keys(7, uids, texts) == [
        text_choice_key(7, u, t) for u, t in zip(uids, texts)
    ]
    assert keep_uniforms(7, uids).tolist() == [keep_uniform(7, u) for u in uids]


def test_keep_uniform_is_deterministic_and_uniform():
    values = np.array([keep_uniform(0, f"uid{i}") for i in range(20000)])
    assert values.min() >= 0 and values.max() < 1
    assert abs(values.mean() - 0.5) < 0.01
    hist, _ = np.histogram(values, bins=10, range=(0, 1))
    assert hist.min() > 1800 and hist.max() < 2200
    assert keep_uniform(0, "uid1") == keep_uniform(0, "uid1")
    assert keep_uniform(0, "uid1") != keep_uniform(1, "uid1")


def test_text_choice_key_depends_on_seed_uid_and_text():
    assert text_choice_key(0, "u", "a") == text_choice_key(0, "u", "a")
    assert len({text_choice_key(s, u, t) for s in (0, 1) for u in "uv" for t in "ab"}) == 8
    assert text_choice_key(0, "ab", "c") != text_choice_key(0, "a", "bc"), "parts are delimited"


def make_records(n_images=3000, seed=0):
    rng = random.Random(seed)
    records = []
    for i in range(n_images):
        for j in range(rng.randint(1, 3)):
            ids = tuple(sorted(rng.sample(range(50), rng.randint(0, 3))))
            records.append(Record(f"img{i}", f"text {j} of {i}", "en", ids))
    return records


def test_one_text_per_image_independent_of_record_order():
    records = make_records()
    probs = {"en": np.full(50, 0.5)}
    decisions = sample_records(records, probs, seed=3)
    shuffled = records[:]
    random.Random(5).shuffle(shuffled)
    assert sample_records(shuffled, probs, seed=3) == decisions
    uids = [d.record.uid for d in decisions]
    assert len(uids) == len(set(uids))
    matched_uids = {r.uid for r in records if r.entry_ids}
    assert set(uids) == matched_uids
    assert sample_records(records, probs, seed=4) != decisions


def test_keep_rate_follows_keep_probability():
    records = [Record(f"img{i}", "t", "en", (i % 4,)) for i in range(40000)]
    probs = {"en": np.array([1.0, 0.5, 0.1, 0.0])}
    decisions = sample_records(records, probs, seed=0)
    for entry_id, p in enumerate(probs["en"]):
        kept = [d.kept for d in decisions if d.record.entry_ids == (entry_id,)]
        sigma = np.sqrt(p * (1 - p) / len(kept))
        assert abs(np.mean(kept) - p) <= 4 * sigma + 1e-12


def test_balancing_caps_head_entries_at_t_and_keeps_the_tail():
    rng = np.random.default_rng(0)
    counts = rng.zipf(1.4, size=300).clip(max=20000)
    records = [
        Record(f"img{e}-{k}", "t", "en", (e,)) for e, c in enumerate(counts) for k in range(c)
    ]
    t = 200
    probs = {"en": entry_probabilities(counts, t)}
    kept = np.zeros_like(counts)
    for d in sample_records(records, probs, seed=1):
        kept[d.record.entry_ids[0]] += d.kept
    tail = counts < t
    assert (kept[tail] == counts[tail]).all()
    for e in np.flatnonzero(~tail):
        assert abs(kept[e] - t) <= 4 * np.sqrt(t), (counts[e], kept[e])


SCRIPT = """
import numpy as np
from curation.balance import Record, sample_records
records = [Record(f"u{i % 700}", f"text {i}", "en", (i % 5,)) for i in range(2000)]
for d in sample_records(records, {"en": np.full(5, 0.3)}, seed=9):
    print(d.record.uid, d.record.text, d.kept)
"""


def test_sampling_does_not_depend_on_pythonhashseed():
    outputs = set()
    for hashseed in ("0", "1", "random"):
        env = {**os.environ, "PYTHONHASHSEED": hashseed}
        result = subprocess.run(
            [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True
        )
        outputs.add(result.stdout)
    assert len(outputs) == 1
    assert outputs.pop().count("\n") == 700


def test_batch_keys_from_arrow_columns_across_blake2b_block_sizes():
    """The batch forms hash Arrow buffers in numba: equal to hashlib for messages that end on,
    just before and just after BLAKE2b's 128-byte block boundaries, multi-byte characters,
    sliced, large_string and chunked columns, and any seed."""
    import pyarrow as pa

    texts = ["é" * (n % 5) + "x" * n for n in range(0, 400)]
    uids = [f"{n:x}" * (n % 4) for n in range(400)]
    for seed in (0, -3, 2**62):
        assert text_choice_keys(seed, pa.array(uids), pa.array(texts)) == [
            text_choice_key(seed, u, t) for u, t in zip(uids, texts)
        ]
    large = pa.array(texts, pa.large_string()).slice(7)
    chunked = pa.chunked_array([pa.array(uids[7:50]), pa.array(uids[50:])])
    assert text_choice_keys(5, chunked, large) == [
        text_choice_key(5, u, t) for u, t in zip(uids[7:], texts[7:])
    ]
    assert keep_uniforms(5, pa.array(texts)).tolist() == [keep_uniform(5, t) for t in texts]


def test_t_en_defaults_to_metaclip2_and_metaclip1_is_at_hand():
    """Rule 7.2: the job's default English threshold is MetaCLIP 2's; MetaCLIP 1's is named."""
    from curation.balance import T_EN_METACLIP1, T_EN_METACLIP2
    from curation.curate.job import CurateConfig

    assert (T_EN_METACLIP2, T_EN_METACLIP1) == (170_000, 20_000)
    assert CurateConfig(metadata="m", input="i", output="o").t_en == T_EN_METACLIP2


def test_a_given_tail_fraction_sets_every_language_english_included():
    """Rule 7.5: with p given, English gets threshold_for_fraction(count_en, p) like the rest,
    and without p English needs a match to derive it."""
    from curation.balance import compute_thresholds

    rng = np.random.default_rng(5)
    counts = {lang: rng.zipf(1.6, 400).astype(np.int64) for lang in ("en", "ja", "ko")}
    given = compute_thresholds(counts, None, 0.3)
    for lang, values in counts.items():
        assert given[lang] == (float(threshold_for_fraction(values, 0.3)), 0.3)
    derived = compute_thresholds(counts, 50, None)
    p = tail_fraction(counts["en"], 50)
    assert derived["en"] == (50.0, p)
    assert derived["ja"] == (float(threshold_for_fraction(counts["ja"], p)), p)
    with pytest.raises(ValueError, match="no English record matched"):
        compute_thresholds({"ja": counts["ja"]}, 50, None)


def test_choose_texts_is_the_smallest_key_then_text_per_image():
    """Rule 8.2 in its one home, `choose_texts`, against the scalar key on every image."""
    from curation.balance import choose_texts

    rng = np.random.default_rng(9)
    uids = sorted(f"u{rng.integers(60)}" for _ in range(400))
    pairs = sorted({(u, f"text {rng.integers(12)}") for u in uids})
    image = np.cumsum([i == 0 or pairs[i][0] != pairs[i - 1][0] for i in range(len(pairs))]) - 1
    chosen = choose_texts(3, [u for u, _ in pairs], [t for _, t in pairs], image)
    by_image = defaultdict(list)
    for (uid, text), flag in zip(pairs, chosen):
        by_image[uid].append((text_choice_key(3, uid, text), text, flag))
    assert len(by_image) > 40
    for options in by_image.values():
        assert sum(flag for _, _, flag in options) == 1
        assert min(options)[2], "the smallest (key, text) is the chosen one"
    assert not choose_texts(3, [], [], np.zeros(0, np.int64)).size
