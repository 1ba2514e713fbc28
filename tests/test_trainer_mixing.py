"""--train-data 'A::B' --train-data-weights: each data stream draws its sources with the
weights, and a resumed loader continues bit-identically on every rank."""

from __future__ import annotations

import math

import pytest
import torch
from trainer_shards import make_shards

from trainer import data, models, train

pytest.importorskip("open_clip")
pytest.importorskip("skimage")


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """Two sources of tiny shards: A's keys start 000, B's 010 (shard indices 10-12)."""
    root = tmp_path_factory.mktemp("mixing")
    make_shards(root / "a", num_shards=3, per_shard=40, image_size=16)
    make_shards(root / "b", num_shards=3, per_shard=40, image_size=16, first_index=10, seed=1)
    return f"{root / 'a'}/{{00000..00002}}.tar::{root / 'b'}/{{00010..00012}}.tar"


def loader(spec, weights, *, rank=0, world_size=2, state=None, batch_size=50):
    tokenizer = models.build_tokenizer("tiny-clip", None, 32)
    sources = data.expand_sources(spec)

    def make_dataset(**resume):
        return data.ShardBatches(
            None, tokenizer, batch_size, 16, rank=rank, world_size=world_size, num_workers=0,
            seed=3, shuffle_buffer=20, record_keys=True, sources=sources, weights=weights,
            **resume,
        )  # fmt: skip

    return data.ResumableLoader(
        make_dataset, 0, state, rank=rank, world_size=world_size, mixed=True
    )


def test_observed_shares_are_within_three_standard_errors(sources):
    weights = data.parse_weights("7::3", 2)
    assert weights == pytest.approx([0.7, 0.3])
    counts, n = [0, 0], 0
    for rank in (0, 1):
        it = loader(sources, weights, rank=rank, batch_size=100)
        for _ in range(50):  # 5,000 samples per rank: each source goes round several passes
            next(it)
            for key in it.last_keys:
                counts[key.startswith("0001")] += 1
                n += 1
    assert n == 10_000
    share, se = counts[0] / n, math.sqrt(0.7 * 0.3 / n)
    assert abs(share - 0.7) < 3 * se, (share, se)


def test_resume_is_bit_identical_on_two_ranks(sources):
    weights = data.parse_weights("1::2", 2)
    for rank in (0, 1):
        whole = loader(sources, weights, rank=rank)
        straight = [(next(whole), whole.last_keys) for _ in range(6)]
        first = loader(sources, weights, rank=rank)
        for _ in range(3):
            next(first)
        resumed = loader(sources, weights, rank=rank, state=first.state_dict())
        for batch, keys in straight[3:]:
            again = next(resumed)
            assert resumed.last_keys == keys
            for name in ("pixels", "tokens", "boxes", "sizes"):
                assert torch.equal(again[name], batch[name]), (rank, name)
    # the ranks read disjoint samples: each source's shards are split between the streams
    seen = []
    for rank in (0, 1):
        it = loader(sources, weights, rank=rank, batch_size=60)
        next(it)
        seen.append(set(it.last_keys))
    assert seen[0] and seen[1] and not seen[0] & seen[1]


def test_weights_that_cannot_work_are_one_line(sources, tmp_path):
    for text, message in (
        ("1", "1 weights for 2"),
        ("1::x", "numbers joined by '::'"),
        ("1::0", "must be positive"),
    ):
        with pytest.raises(ValueError, match=message):
            data.parse_weights(text, 2)
    it = loader(sources, data.parse_weights("1::1", 2))
    next(it)
    state = it.state_dict()
    with pytest.raises(ValueError, match="resumes with the world size"):
        data.ResumableLoader(lambda **kw: None, 0, None, elastic=([state, state], 2), mixed=True)
    # a checkpoint resumed with weights added or dropped: one line, not a silent restart
    with pytest.raises(ValueError, match="resume it with the same --train-data-weights"):
        data.ResumableLoader(lambda **kw: None, 0, state)
    plain = data.ShardBatches(data.expand_urls(sources), models.build_tokenizer("tiny-clip",
                              None, 32), 10, 16, num_workers=0)  # fmt: skip
    one = data.ResumableLoader(lambda **kw: plain, 0)
    next(one)
    with pytest.raises(ValueError, match="resume it without --train-data-weights"):
        data.ResumableLoader(lambda **kw: None, 0, one.state_dict(), mixed=True)


def test_a_training_run_mixes_its_sources(sources, tmp_path):
    summary = train.main([
        "--train-data", sources, "--train-data-weights", "1::1", "--model", "tiny-clip",
        "--batch-size", "8", "--steps", "2", "--precision", "fp32", "--workers", "0",
        "--record-samples", "--output-dir", str(tmp_path / "run"),
    ])  # fmt: skip
    assert summary["steps"] == 2
    keys = (tmp_path / "run" / "samples_rank0.txt").read_text().split()
    assert any(k.startswith("0001") for k in keys) and any(k.startswith("0000") for k in keys)
