"""The trainer's WebDataset loader on real-image shards: O(1) and elastic resume, drops,
splitting, epoch size."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from trainer_shards import make_shards

open_clip = pytest.importorskip("open_clip")
pytest.importorskip("skimage")

from trainer import data  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("loader_shards")
    make_shards(root, num_shards=3, per_shard=40, broken=True)
    return root


@pytest.fixture(scope="module")
def tokenizer():
    open_clip.add_model_config(ROOT / "trainer" / "model_configs")
    return open_clip.get_tokenizer("tiny-clip")


def loader(
    shards,
    tokenizer,
    *,
    workers,
    state=None,
    rank=0,
    world_size=1,
    buffer=16,
    resampled=False,
    batch_size=4,
    elastic=None,
    spec="{00000..00002}.tar",
):
    urls = data.expand_urls(str(shards / spec))

    def make(**resume):
        return data.ShardBatches(
            urls,
            tokenizer,
            batch_size=batch_size,
            image_size=32,
            rank=rank,
            world_size=world_size,
            num_workers=workers,
            seed=3,
            shuffle_buffer=buffer,
            resampled=resampled,
            record_keys=True,
            **resume,
        )

    return data.ResumableLoader(
        make,
        workers,
        state,
        rank=rank,
        world_size=world_size,
        elastic=elastic,
        urls=urls,
        seed=3,
        resampled=resampled,
    )


def take(it, n):
    out = []
    for _ in range(n):
        batch = next(it)
        out.append((batch, list(it.last_keys)))
    return out


def as_stored(state: dict) -> dict:
    return json.loads(json.dumps(state))  # as a checkpoint stores it


@pytest.mark.parametrize("resampled", [False, True])
def test_resume_continues_with_identical_batches(shards, tokenizer, resampled):
    reference = take(loader(shards, tokenizer, workers=2, resampled=resampled), 7)

    first = loader(shards, tokenizer, workers=2, resampled=resampled)
    take(first, 3)  # an odd count: the resumed loader must start with the other worker
    state = as_stored(first.state_dict())
    resumed = take(loader(shards, tokenizer, workers=2, state=state, resampled=resampled), 4)

    for (ref, ref_keys), (batch, keys) in zip(reference[3:], resumed, strict=True):
        assert keys == ref_keys
        assert ref.keys() == batch.keys() == {"pixels", "sizes", "boxes", "flips", "tokens"}
        for name in ref:
            assert torch.equal(batch[name], ref[name]), name  # crops seeded per position
    pixels = reference[0][0]["pixels"]
    assert pixels.dtype == torch.uint8 and pixels.shape == (4, 40, 40, 3)  # as stored

    with pytest.raises(ValueError, match="elastic"):
        loader(shards, tokenizer, workers=1, state=state)


def test_resume_reads_only_the_buffer_and_one_shard_position(tmp_path_factory, tokenizer):
    """O(1) resume: neither samples before the position nor earlier shards are decoded or read;
    what a resume reads does not grow with how far the run had got."""
    root = tmp_path_factory.mktemp("many_shards")
    make_shards(root, num_shards=30, per_shard=20)
    spec = "{00000..00029}.tar"
    costs = {}
    for batches in (2, 20, 140):  # ~0.5, 4 and 28 shards into the pass
        run = loader(root, tokenizer, workers=0, buffer=8, spec=spec)
        take(run, batches)
        state = as_stored(run.state_dict())
        expected = take(run, 2)
        resumed = loader(root, tokenizer, workers=0, buffer=8, spec=spec, state=state)
        got = take(resumed, 2)
        assert [k for _, k in got] == [k for _, k in expected]
        slot = state["slots"]["0"]
        scans = len({v for v, _, _ in slot["buffer"]}) + 1  # the buffer's shards, the cursor's
        assert scans <= 3 * 8 // 20 + 2  # the buffer holds only samples of the last 3 x 8 read
        io = resumed.last_io  # what the resumed stream read up to its second batch
        # data read: the 8 buffered samples and the 8 of two batches, nothing else
        assert io["read"] <= 8 + 8
        # header skips: only within the shards the buffer and the cursor point into
        assert io.get("skipped", 0) <= 20 * scans
        costs[batches] = io["read"] + io.get("skipped", 0)
    assert costs[140] <= costs[2] + 2 * 20, costs  # flat in the position, not linear


@pytest.mark.parametrize("new_workers", [1, 2])
def test_elastic_resume_two_ranks_to_one(tmp_path_factory, tokenizer, new_workers):
    """2 ranks -> 1 rank mid-pass: no sample of the pass is seen twice, and the only samples
    the pass loses are the ones the old shuffle buffers held (the documented boundary loss)."""
    root = tmp_path_factory.mktemp("elastic_shards")
    good = set(make_shards(root, num_shards=6, per_shard=15, broken=True))
    spec = "{00000..00005}.tar"
    seen, states = [], []
    for rank in range(2):
        it = loader(root, tokenizer, workers=1, rank=rank, world_size=2, buffer=6, spec=spec)
        seen += [k for _, keys in take(it, 5) for k in keys]  # 20 of 45 per rank
        states.append(as_stored(it.state_dict()))
    lost = sum(len(s["buffer"]) for st in states for s in st["slots"].values())
    assert lost == 2 * 5 and len(set(seen)) == len(seen) == 40  # a draw leaves 5 of 6 buffered

    resumed = loader(
        root, tokenizer, workers=new_workers, buffer=1, batch_size=1, spec=spec,
        elastic=(states, 2),
    )  # fmt: skip
    assert "elastic resume (2 -> " in resumed.note and "10 samples" in resumed.note
    rest = len(good) - len(seen) - lost
    after = []  # samples from the handed-over rest of the pass (a slot may start the next one)
    for _ in range(2 * rest):
        next(resumed)
        state = resumed.slots[resumed.last_slot]
        if state["visit"] < len(state["plan"]):  # buffer 1: the sample is from the cursor's visit
            after += resumed.last_keys
    assert len(after) == rest
    assert len(set(after)) == rest  # nothing twice within the rest of the pass
    assert not set(after) & set(seen)  # nothing of the pass seen again
    assert len(good - set(seen) - set(after)) == lost  # only the buffered samples are skipped
    assert resumed.dropped()["missing_image"] >= 1  # old drop counts carried over


def test_broken_samples_are_dropped_and_counted(shards, tokenizer):
    it = loader(shards, tokenizer, workers=0, buffer=1)  # no shuffling: passes stay apart
    # one pass (120) + 4 of the next
    keys = [k for _, batch_keys in take(it, 31) for k in batch_keys]
    assert len(set(keys[:120])) == 120
    assert it.dropped() == {"missing_image": 1, "missing_text": 1, "bad_image": 1}
    assert not any("b00" in key for key in keys)


# 5 ranks > 3 shards: each rank then reads every shard and keeps every 5th sample
@pytest.mark.parametrize(("world_size", "batches"), [(2, 6), (5, 2)])
def test_ranks_read_disjoint_samples(shards, tokenizer, world_size, batches):
    per_rank = []
    for rank in range(world_size):
        it = loader(shards, tokenizer, workers=0, rank=rank, world_size=world_size, buffer=4)
        per_rank.append({k for _, keys in take(it, batches) for k in keys})
        assert len(per_rank[-1]) == batches * 4
    for a in range(world_size):
        for b in range(a + 1, world_size):
            assert not per_rank[a] & per_rank[b]


def test_epoch_size_from_sizes_json(shards, tmp_path):
    urls = data.expand_urls(str(shards / "{00000..00002}.tar"))
    assert data.count_samples(urls) == 123  # 3 x 40 good + 3 broken, as sizes.json says
    assert data.count_samples(urls[:1]) == 43
    (tmp_path / "00000.tar").write_bytes((shards / "00000.tar").read_bytes())
    with pytest.raises(ValueError, match="--train-num-samples"):
        data.count_samples([str(tmp_path / "00000.tar")])


def test_a_checkpoint_of_the_previous_data_format_is_refused_clearly(shards, tokenizer):
    old = {"batches": 3, "num_workers": 0, "slots": {"0": {"position": 12, "dropped": {}}}}
    with pytest.raises(ValueError, match="older trainer"):
        loader(shards, tokenizer, workers=0, state=old)
    with pytest.raises(ValueError, match="older trainer"):
        loader(shards, tokenizer, workers=1, elastic=([old], 1))
