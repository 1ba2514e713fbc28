"""Online curation (MetaCLIP 2's training-time balancing) on a real curation run: per-epoch
draws against their expectation, tail images always kept, the fixed-epoch pass equal to
curated/, pool shards, bad inputs, and a 2-rank training run that resumes bit-identically."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from curation.curate.job import CurateConfig, run
from curation.curate.online import OnlineCuration, OnlineCurationError, pool_from_matches
from curation.shards.export import read_pool
from tests.curation_fixtures import caption_rows, wit_entries, write_metadata

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 200


@pytest.fixture(scope="module")
def curation_run(spark, tmp_path_factory):
    """A curation run over 1,500 real CC3M captions and the WIT captions of el and ja, with
    caption n-gram metadata (head and tail entries in every language)."""
    root = tmp_path_factory.mktemp("online")
    rows = caption_rows(1500, ("el", "ja"))
    from curation.identity import image_uid

    table = pa.table(
        {
            "uid": [image_uid(r[0], r[1]) for r in rows],
            "url": [r[0] for r in rows],
            "page_url": [r[1] for r in rows],
            "text": [r[2] for r in rows],
            "lang": [r[3] for r in rows],
        }
    )
    # a second alt-text for 300 images: pool samples with several candidates
    texts = [f"a photo. {t}" for t in table.column("text").to_pylist()[:300]]
    extra = table.slice(0, 300).set_column(3, "text", pa.array(texts))
    pq.write_table(pa.concat_tables([table, extra]), root / "alt_text.parquet")
    by_lang = defaultdict(list)
    for r in rows:
        by_lang[r[3]].append(r[2])
    write_metadata(root / "metadata", {lang: wit_entries(c, lang) for lang, c in by_lang.items()})
    config = CurateConfig(
        metadata=str(root / "metadata"), input=str(root / "alt_text.parquet"),
        output=str(root / "run"), t_en=30, seed=5,
    )  # fmt: skip
    run(config, spark)
    return root / "run"


@pytest.fixture(scope="module")
def pool(curation_run):
    return pool_from_matches(str(curation_run))


def read_curated(run_dir: Path) -> dict[str, tuple]:
    rows = ds.dataset(str(run_dir / "curated"), partitioning="hive").to_table().to_pylist()
    return {r["uid"]: (r["text"], r["lang"], round(r["keep_prob"], 12)) for r in rows}


def test_fixed_epoch_pass_equals_curated(curation_run, pool):
    online = OnlineCuration(str(curation_run), fixed_epoch=True)
    assert online.seed == 5 and online.t_en == 30  # the run's own settings by default
    kept = {}
    for epoch in (0, 3):  # fixed: every epoch is the same draw
        decisions = {u: online.decide(u, c, epoch) for u, c in pool}
        kept[epoch] = {u: (c.text, c.lang, round(p, 12)) for u, (c, p, k) in decisions.items() if k}
    assert kept[0] == kept[3] == read_curated(curation_run)
    assert any(len(c) > 1 for _, c in pool)  # the choice among several texts was exercised


def simulate(online, pool, epochs=EPOCHS):
    """Per epoch: kept count per (lang, entry), and which images were kept."""
    per_entry = defaultdict(lambda: np.zeros(epochs))
    kept_images = np.zeros((epochs, len(pool)), dtype=bool)
    for e in range(epochs):
        for i, (uid, candidates) in enumerate(pool):
            chosen, _, kept = online.decide(uid, candidates, e)
            if kept:
                kept_images[e, i] = True
                for entry in chosen.entry_ids:
                    per_entry[(chosen.lang, entry)][e] += 1
    return per_entry, kept_images


def test_kept_counts_per_entry_follow_their_expectation(curation_run, pool):
    online = OnlineCuration(str(curation_run))
    per_entry, kept_images = simulate(online, pool)
    expected = defaultdict(float)  # each candidate is an epoch's choice with probability 1/n
    for _, candidates in pool:
        for c in candidates:
            for entry in c.entry_ids:
                expected[(c.lang, entry)] += online.keep_prob(c) / len(candidates)
    outside = []
    for key, exp in expected.items():
        counts = per_entry[key]
        se = counts.std(ddof=1) / np.sqrt(EPOCHS)
        if abs(counts.mean() - exp) > 3 * se + 1e-9:
            outside.append((key, counts.mean(), exp, se))
    assert len(expected) > 1000
    # 3 standard errors: 0.27% of entries fall outside by chance alone; allow that, no more
    assert len(outside) <= 0.003 * len(expected) + 2, outside[:10]
    # an epoch keeps about sum(keep) images: the epoch length the trainer uses
    per_epoch = kept_images.sum(axis=1)
    assert (
        abs(per_epoch.mean() - online.expected_kept(pool))
        < 3 * per_epoch.std() / np.sqrt(EPOCHS) + 1e-9
    )
    assert len({tuple(np.flatnonzero(row)) for row in kept_images[:5]}) == 5  # epochs differ


def test_tail_images_are_kept_in_every_epoch(curation_run, pool):
    online = OnlineCuration(str(curation_run))
    all_tail = []  # images all of whose candidates match a tail entry (count < t: prob 1)
    for i, (_, candidates) in enumerate(pool):
        if all(any(online.probs[c.lang][e] == 1.0 for e in c.entry_ids) for c in candidates):
            all_tail.append(i)
    assert all_tail
    _, kept_images = simulate(online, pool, epochs=30)
    assert kept_images[:, all_tail].all()  # every candidate matches a tail entry: always kept
    # an image whose chosen text matches a tail entry is kept in that epoch
    for e in range(30):
        for uid, candidates in pool:
            chosen, prob, kept = online.decide(uid, candidates, e)
            if any(online.probs[chosen.lang][x] == 1.0 for x in chosen.entry_ids):
                assert prob == 1.0 and kept
    # head images rotate: some are kept in one epoch and not in another
    rotating = kept_images.any(axis=0) & ~kept_images.all(axis=0)
    assert rotating.sum() > 10


def test_same_seed_same_draws_other_seed_other_draws(curation_run, pool):
    a = OnlineCuration(str(curation_run))
    b = OnlineCuration(str(curation_run))
    c = OnlineCuration(str(curation_run), seed=6)
    draws = [[o.decide(u, cands, 4)[2] for u, cands in pool] for o in (a, b, c)]
    assert draws[0] == draws[1] != draws[2]


def test_bad_runs_fail_with_a_clear_error(curation_run, tmp_path):
    with pytest.raises(OnlineCurationError, match="no run.json"):
        OnlineCuration(str(tmp_path))
    (tmp_path / "run.json").write_text(json.dumps({"config": {"t_en": 30}}))
    with pytest.raises(OnlineCurationError, match="no entry_counts"):
        OnlineCuration(str(tmp_path))
    # a run with no English match cannot take --t-en
    only_el = tmp_path / "el_only"
    (only_el / "entry_counts" / "lang=el").mkdir(parents=True)
    (only_el / "run.json").write_text(json.dumps({"config": {"t_en": 30, "seed": 0}}))
    pq.write_table(
        pa.table({"entry_id": pa.array([0, 1], pa.int32()), "count": pa.array([3, 50])}),
        only_el / "entry_counts" / "lang=el" / "part-0.parquet",
    )
    with pytest.raises(OnlineCurationError, match="needs English entries"):
        OnlineCuration(str(only_el))
    assert OnlineCuration(str(only_el), tail_fraction=0.5).thresholds["el"][0] >= 1


def test_pool_list_has_every_matched_image_with_all_its_texts(curation_run, pool):
    table, run_info = read_pool(str(curation_run / "curated"))
    assert run_info["config"]["seed"] == 5
    assert table.column("uid").to_pylist() == [u for u, _ in pool]
    for (uid, candidates), value in zip(pool, table.column("candidates").to_pylist(), strict=True):
        listed = json.loads(value)
        assert [c["text"] for c in listed] == [c.text for c in candidates], uid
        assert [tuple(c["entry_ids"]) for c in listed] == [c.entry_ids for c in candidates]
    matches = ds.dataset(str(curation_run / "matches"), partitioning="hive").to_table()
    matched = {r["uid"] for r in matches.to_pylist() if r["entry_ids"]}
    assert table.num_rows == len(matched) < len(set(matches.column("uid").to_pylist()))


# ---------------------------------------------------------------- in the trainer


def write_pool_shards(curation_run: Path, pool, out: Path, per_shard: int = 120) -> None:
    """Pool shards as `make shards POOL=matched` writes them (KEY.jpg/txt/json with the
    candidates as a JSON string, sizes.json, manifest.json naming the run), with real photos
    in place of downloads."""
    import random

    import webdataset as wds
    from trainer_shards import _crop, _jpeg, source_images

    images, rng = source_images(), random.Random(0)
    out.mkdir(parents=True)
    sizes = {}
    for start in range(0, len(pool), per_shard):
        name = f"{start // per_shard:05d}.tar"
        with wds.TarWriter(str(out / name)) as sink:
            for i, (uid, candidates) in enumerate(pool[start : start + per_shard]):
                listed = [{"text": c.text, "lang": c.lang, "entry_ids": list(c.entry_ids)}
                          for c in candidates]  # fmt: skip
                meta = {"uid": uid, "lang": candidates[0].lang, "candidates": json.dumps(listed)}
                sink.write({
                    "__key__": f"{start + i:09d}",
                    "jpg": _jpeg(_crop(images[rng.randrange(len(images))], rng, 40)),
                    "txt": candidates[0].text,
                    "json": json.dumps(meta),
                })  # fmt: skip
        sizes[name] = len(pool[start : start + per_shard])
    (out / "sizes.json").write_text(json.dumps(sizes))
    manifest = {"total_samples": sum(sizes.values()),
                "source": {"pool": "matched", "run_dir": str(curation_run)}}  # fmt: skip
    (out / "manifest.json").write_text(json.dumps(manifest))


def train(*args, ranks=1):
    launcher = [sys.executable]
    if ranks > 1:
        launcher += ["-m", "torch.distributed.run", f"--nproc_per_node={ranks}", "--standalone"]
    cmd = [*launcher, str(ROOT / "trainer" / "train.py"), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=400)


@pytest.fixture(scope="module")
def pool_shards(curation_run, pool, tmp_path_factory):
    pytest.importorskip("open_clip")
    pytest.importorskip("skimage")
    out = tmp_path_factory.mktemp("pool") / "shards"
    write_pool_shards(curation_run, pool, out)
    return out


def online_args(shards, run_dir, out, *extra):
    return [
        "--train-data", str(shards), "--online-curation", str(run_dir), "--model", "tiny-clip",
        "--batch-size", "8", "--steps", "12", "--warmup", "1", "--lr", "1e-3",
        "--precision", "fp32", "--workers", "1", "--shuffle-buffer", "20", "--log-every", "3",
        "--save-every", "6", "--keep-checkpoints", "0", "--record-samples",
        "--output-dir", str(out), *extra,
    ]  # fmt: skip


def test_two_rank_online_run_resumes_bit_identically(pool_shards, curation_run, tmp_path):
    import torch

    full = train(*online_args(pool_shards, curation_run, tmp_path / "full"), ranks=2)
    assert full.returncode == 0, full.stderr[-3000:]
    assert "pool images" in full.stdout and "kept per epoch expected" in full.stdout
    first = train(*online_args(pool_shards, curation_run, tmp_path / "b", "--exit-after", "6"),
                  ranks=2)  # fmt: skip
    assert first.returncode == 0, first.stderr[-3000:]
    second = train(*online_args(pool_shards, curation_run, tmp_path / "b", "--resume", "latest"),
                   ranks=2)  # fmt: skip
    assert second.returncode == 0, second.stderr[-3000:]

    def metrics(out):
        return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]

    assert metrics(tmp_path / "b") == metrics(tmp_path / "full")
    last = metrics(tmp_path / "full")[-1]["online"]
    assert sum(last["kept"].values()) == 12 * 8 * 2  # every trained sample was a kept one
    assert sum(last["skipped"].values()) > 0
    for rank in (0, 1):
        name = f"samples_rank{rank}.txt"
        assert (tmp_path / "b" / name).read_text() == (tmp_path / "full" / name).read_text()
    a = torch.load(tmp_path / "full/checkpoints/step_00000012.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "b/checkpoints/step_00000012.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)

    # changing the threshold on resume is refused
    third = train(*online_args(pool_shards, curation_run, tmp_path / "b", "--resume", "latest",
                               "--t-en", "10", "--steps", "14"))  # fmt: skip
    assert third.returncode == 1 and "changing the online curation on resume" in third.stderr


def test_online_curation_bad_inputs_are_one_line(pool_shards, curation_run, tmp_path, capsys):
    """The trainer's error path: one `error:` line and exit 1. The first case runs the trainer
    as a user does (no traceback); the others call its `cli` in this process."""
    from trainer.train import cli

    def fails(shards, run_dir, out, message):
        assert cli(online_args(shards, run_dir, tmp_path / out)) == 1, out
        lines = capsys.readouterr().err.splitlines()
        errors = [x for x in lines if x.startswith("error:")]
        assert len(errors) == 1 and message in errors[0], (out, lines[-20:])

    result = train(*online_args(pool_shards, tmp_path / "nothing", tmp_path / "not_a_run"))
    assert result.returncode == 1
    lines = [x for x in result.stderr.splitlines() if x.startswith("error:")]
    assert len(lines) == 1 and "come from" in lines[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    other = tmp_path / "other_run"
    other.mkdir()
    (other / "run.json").write_text("{}")
    fails(pool_shards, other, "other_run_out", "come from")  # pool shards from another run
    # shards that are not pool shards
    plain = tmp_path / "plain"
    plain.mkdir()
    for f in pool_shards.glob("*.tar"):
        (plain / f.name).write_bytes(f.read_bytes())
    (plain / "sizes.json").write_text((pool_shards / "sizes.json").read_text())
    fails(plain, curation_run, "plain_run", "is not a pool shard")
    # a run without entry_counts, with shards that name it
    bare = tmp_path / "bare_run"
    bare.mkdir()
    (bare / "run.json").write_text("{}")
    named = tmp_path / "named"
    named.mkdir()
    for f in pool_shards.glob("*"):
        (named / f.name).write_bytes(f.read_bytes())
    manifest = json.loads((pool_shards / "manifest.json").read_text())
    manifest["source"]["run_dir"] = str(bare)
    (named / "manifest.json").write_text(json.dumps(manifest))
    fails(named, bare, "bare_out", "no entry_counts/ table")


def test_online_curation_reads_its_run_from_an_object_store(curation_run, pool, s3):
    """The trainer's --online-curation RUN at s3://: run.json, entry_counts/ and matches/ read
    with pyarrow as from a local folder; the same pool and the same decisions."""
    uri = s3.upload(curation_run, "online", "run")
    assert pool_from_matches(uri) == pool
    here, there = OnlineCuration(str(curation_run)), OnlineCuration(uri)
    assert there.thresholds == here.thresholds and there.seed == here.seed
    for uid, candidates in pool[:200]:
        assert there.decide(uid, candidates, 2) == here.decide(uid, candidates, 2)
