"""The trainer's WebDataset loader on real-image shards: resume, drops, splitting, epoch size."""

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
def model_parts():
    open_clip.add_model_config(ROOT / "trainer" / "model_configs")
    _, preprocess, _ = open_clip.create_model_and_transforms("tiny-clip")
    return preprocess, open_clip.get_tokenizer("tiny-clip")


def loader(
    shards, model_parts, *, workers, state=None, rank=0, world_size=1, buffer=16, resampled=False
):
    preprocess, tokenizer = model_parts
    urls = data.expand_urls(str(shards / "{00000..00002}.tar"))

    def make(**resume):
        return data.ShardBatches(
            urls,
            preprocess,
            tokenizer,
            batch_size=4,
            rank=rank,
            world_size=world_size,
            num_workers=workers,
            seed=3,
            shuffle_buffer=buffer,
            resampled=resampled,
            record_keys=True,
            **resume,
        )

    return data.ResumableLoader(make, workers, state, seed=3)


def take(it, n):
    out = []
    for _ in range(n):
        images, tokens = next(it)
        out.append((images, tokens, list(it.last_keys)))
    return out


@pytest.mark.parametrize("resampled", [False, True])
def test_resume_continues_with_identical_batches(shards, model_parts, resampled):
    reference = take(loader(shards, model_parts, workers=2, resampled=resampled), 7)

    first = loader(shards, model_parts, workers=2, resampled=resampled)
    take(first, 3)  # an odd count: the resumed loader must start with the other worker
    state = json.loads(json.dumps(first.state_dict()))  # as stored in a checkpoint
    resumed = take(loader(shards, model_parts, workers=2, state=state, resampled=resampled), 4)

    for (ref_images, ref_tokens, ref_keys), (images, tokens, keys) in zip(
        reference[3:], resumed, strict=True
    ):
        assert keys == ref_keys
        assert torch.equal(images, ref_images)  # augmentation seeded per batch position
        assert torch.equal(tokens, ref_tokens)
    assert reference[0][0].shape == (4, 3, 32, 32)

    with pytest.raises(ValueError, match="same --workers"):
        loader(shards, model_parts, workers=1, state=state)


def test_broken_samples_are_dropped_and_counted(shards, model_parts):
    it = loader(shards, model_parts, workers=0, buffer=1)  # no shuffling: passes stay apart
    keys = [k for batch in take(it, 31) for k in batch[2]]  # one pass (120) + 4 of the next
    assert len(set(keys[:120])) == 120
    assert it.dropped() == {"missing_image": 1, "missing_text": 1, "bad_image": 1}
    assert not any("b00" in key for key in keys)


# 5 ranks > 3 shards: each rank then reads every shard and keeps every 5th sample
@pytest.mark.parametrize(("world_size", "batches"), [(2, 6), (5, 2)])
def test_ranks_read_disjoint_samples(shards, model_parts, world_size, batches):
    per_rank = []
    for rank in range(world_size):
        it = loader(shards, model_parts, workers=0, rank=rank, world_size=world_size, buffer=4)
        per_rank.append({k for batch in take(it, batches) for k in batch[2]})
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
