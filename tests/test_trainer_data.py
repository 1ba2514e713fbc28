"""The trainer's WebDataset loader on real-image shards: O(1) and elastic resume, drops,
splitting, epoch size."""

from __future__ import annotations

import json
from collections import Counter
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
        assert (
            ref.keys() == batch.keys() == {"pixels", "sizes", "boxes", "flips", "tokens", "train"}
        )
        assert batch["train"] is ref["train"] is True
        for name in ref.keys() - {"train"}:
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


def keys_of(url: str) -> list[str]:
    return [s["__key__"] for _, s in data.read_shard(url, lambda k: True, Counter())]


def draws(stream: data.SlotStream, n: int) -> list[dict]:
    it = iter(stream)
    return [next(it) for _ in range(n)]


def slot_stream(urls, buffer: int, state: dict | None = None) -> data.SlotStream:
    state = {**data.fresh_slot_state(), **(state or {})}
    return data.SlotStream(urls, 0, 1, 3, False, buffer, state, Counter())


@pytest.mark.parametrize("buffer", [1000, 16])
def test_a_stream_draws_each_pass_whole_before_the_next(shards, buffer):
    """Epoch mode, one stream: the first 123 draws are the 123 samples of pass 0, each once,
    the next 123 those of pass 1, also with a buffer of 1000 > the data (which then holds
    samples of 9 passes); and a resume mid-pass continues with the same draws."""
    urls = data.expand_urls(str(shards / "{00000..00002}.tar"))
    one_pass = sorted(k for url in urls for k in keys_of(url))
    assert len(one_pass) == len(set(one_pass)) == 123
    stream = slot_stream(urls, buffer)
    got = draws(stream, 2 * 123)
    for n_pass in (0, 1):
        part = got[n_pass * 123 : (n_pass + 1) * 123]
        assert sorted(s["__key__"] for s in part) == one_pass
        assert {s["__pass__"] for s in part} == {n_pass}
    assert [s["__key__"] for s in got[:123]] != [s["__key__"] for s in got[123:]]  # shuffled

    first = slot_stream(urls, buffer)
    draws(first, 100)
    state = as_stored(first.state())
    if buffer > 123:  # the boundary case: the buffer holds samples of later passes (visit >= 3)
        assert max(v for v, _, _ in state["buffer"]) >= 3
    resumed = draws(slot_stream(urls, buffer, state), 146)
    assert [s["__key__"] for s in resumed] == [s["__key__"] for s in got[100:]]


def cut_copy(shards: Path, out: Path, name: str, sample: int, into_data: bool, sizes=True) -> Path:
    """A copy of the shards with `name` cut short at the `sample`-th sample's first member:
    inside its data (a read error) or right at its header (the tar just ends there)."""
    import shutil
    import tarfile

    out.mkdir()
    for tar in shards.glob("*.tar"):
        shutil.copy(tar, out / tar.name)
    if sizes:
        shutil.copy(shards / "sizes.json", out / "sizes.json")
    with tarfile.open(out / name) as tar:
        member = tar.getmembers()[3 * sample]  # jpg, json, txt per sample
    cut = member.offset_data + 10 if into_data else member.offset
    (out / name).write_bytes((out / name).read_bytes()[:cut])
    return out / name


def test_a_truncated_shard_counts_the_samples_it_lost_and_warns_once(
    shards, tokenizer, tmp_path, capsys
):
    """00001.tar (40 samples in sizes.json) cut inside its 16th sample: every pass loses 25
    samples and counts them as bad_shard; the warning comes once, not once per visit."""
    cut_copy(shards, tmp_path / "cut", "00001.tar", 15, into_data=True)
    it = loader(tmp_path / "cut", tokenizer, workers=0, buffer=1, batch_size=1)
    batches = 0
    while batches == 0 or it.slots[0]["visit"] < 6:  # up to the first sample of pass 2
        next(it)
        batches += 1
    assert batches == 2 * (123 - 25 - 3) + 1  # the 3 broken samples are dropped as before
    assert it.dropped()["bad_shard"] == 2 * 25
    lines = capsys.readouterr().err.splitlines()
    warnings = [x for x in lines if x.startswith("warning: skipping unreadable shard")]
    assert len(warnings) == 1 and "00001.tar after 15 of 40 samples" in warnings[0], lines

    # cut at a header, the tar just ends early: sizes.json tells, and 40 - 30 are lost
    url = str(cut_copy(shards, tmp_path / "header", "00002.tar", 30, into_data=False))
    counters = Counter()
    assert len(list(data.read_shard(url, lambda k: True, counters))) == 30
    assert counters["bad_shard"] == 10
    # without sizes.json an unreadable shard counts 1 (and a cut at a header goes unseen)
    url = str(cut_copy(shards, tmp_path / "unsized", "00001.tar", 15, into_data=True, sizes=False))
    counters = Counter()
    assert len(list(data.read_shard(url, lambda k: True, counters))) == 15
    assert counters["bad_shard"] == 1


def test_remote_shard_reads_that_fail_midway_are_retried_from_where_they_broke(
    shards, monkeypatch, capsys
):
    """A web server or object store that drops the connection mid-shard, or answers 503, costs
    a retry (counted as shard_retries), not the shard: every sample comes out once, as from
    the local file, and none is counted twice as read. A shard that keeps failing is skipped
    with its samples counted as bad_shard and one warning; a missing one (404) is not retried."""
    from flaky_http import flaky_server

    monkeypatch.setattr(data, "SHARD_RETRY_BACKOFF_S", 0.01)
    tar = (shards / "00001.tar").read_bytes()
    local = [(k, s["__key__"], s.get("txt")) for k, s in data.read_shard(
        str(shards / "00001.tar"), lambda k: True, Counter())]  # fmt: skip
    sizes_json = json.loads((shards / "sizes.json").read_text())
    sizes_json.update({f"{n}.tar": sizes_json["00001.tar"] for n in ("cut", "busy", "down")})
    sizes = json.dumps(sizes_json).encode()
    data._SIZES.clear()
    try:
        with flaky_server(lambda name: sizes if name == "sizes.json" else tar) as (
            base,
            requests,
        ):
            for name, retries in (("cut", 2), ("busy", 1)):
                counters = Counter()
                got = [(k, s["__key__"], s.get("txt")) for k, s in data.read_shard(
                    f"{base}/{name}.tar", lambda k: True, counters)]  # fmt: skip
                assert got == local, name
                assert counters == Counter(read=len(local), shard_retries=retries), name
            odd = [k for k, *_ in local if k % 2]
            counters = Counter()  # a strided reader's share, retried: still only its samples
            requests["cut.tar"] = 0
            got = [k for k, _ in data.read_shard(f"{base}/cut.tar", lambda k: k % 2, counters)]
            assert got == odd and counters["read"] == len(odd)
            assert counters["shard_retries"] == 2
            counters = Counter()
            assert list(data.read_shard(f"{base}/down.tar", lambda k: True, counters, set())) == []
            assert counters == Counter(
                bad_shard=len(local), shard_retries=data.SHARD_READ_ATTEMPTS - 1
            )
            assert requests["down.tar"] == data.SHARD_READ_ATTEMPTS
            assert list(data.read_shard(f"{base}/gone.tar", lambda k: True, Counter())) == []
            assert requests["gone.tar"] == 1
    finally:
        data._SIZES.clear()
    warnings = [x for x in capsys.readouterr().err.splitlines() if "unreadable shard" in x]
    assert len(warnings) == 2 and "down.tar after 0 of 40 samples" in warnings[0], warnings


def test_shards_and_their_sizes_are_read_from_an_object_store(shards, s3):
    """s3:// shard URLs (endpoint and credentials from the standard AWS_* variables, as the
    curation jobs read them): the samples and the sample count equal the local folder's."""
    url = s3.upload(shards, "loader", "shards")
    data._SIZES.clear()
    try:
        names = ["00000.tar", "00001.tar", "00002.tar"]
        local = [str(shards / n) for n in names]
        remote = [f"{url}/{n}" for n in names]
        assert data.count_samples(remote) == data.count_samples(local) == 123
        for here, there in zip(local, remote):
            counters = Counter()
            got = [(k, s["__key__"], s.get("txt")) for k, s in data.read_shard(
                there, lambda k: k % 3 == 0, counters)]  # fmt: skip
            want = [(k, s["__key__"], s.get("txt")) for k, s in data.read_shard(
                here, lambda k: k % 3 == 0, Counter())]  # fmt: skip
            assert got == want and counters["read"] == len(want) and counters["skipped"] > 0
        assert data.shard_size(remote[1]) == 40
        assert data._read_json_next_to(f"{url}/missing/00000.tar", "sizes.json") is None
    finally:
        data._SIZES.clear()
