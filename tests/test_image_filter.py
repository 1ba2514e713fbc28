"""The image filter (jobs/filter_images.py) on real photographs: scikit-image's bundled set cut
into tiles, planted exact and near copies, an evaluation set, blocklists, faces; one Spark run
of the job shared by the tests, plus a killed run that resumes."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from curation.image_filter import faces, hashes
from curation.image_filter.blocklists import read_hash_list, read_url_list
from curation.image_filter.decide import Rules, decide
from curation.image_filter.evalsets import hash_eval_sets
from curation.image_filter.job import FilterConfig, run
from curation.shards import loopback
from trainer.benchmark_sets import write_benchmark_dir

pytest.importorskip("skimage")
pytest.importorskip("pdqhash")
pytest.importorskip("nudenet")
pytest.importorskip("dlib")

ROOT = Path(__file__).resolve().parents[1]
JOB = ROOT / "jobs" / "filter_images.py"
SHARDS = 4


def jpeg(image: Image.Image, quality: int = 95) -> bytes:
    out = io.BytesIO()
    image.convert("RGB").save(out, "JPEG", quality=quality)
    return out.getvalue()


def photo_tiles() -> list[Image.Image]:
    """3 x 3 tiles of each bundled photograph (170 px): 108 distinct real pictures."""
    tiles = []
    for name in loopback.BUNDLED_PHOTOS:
        with Image.open(loopback.bundled_photo_dir() / name) as photo:
            photo = photo.convert("RGB")
        w, h = photo.size
        for i in range(3):
            for j in range(3):
                tiles.append(
                    photo.crop((j * w // 3, i * h // 3, (j + 1) * w // 3, (i + 1) * h // 3))
                )
    return tiles


def quality(image: Image.Image) -> int:
    return hashes.pdq(np.asarray(image.convert("RGB")))[1]


def centre_crop(image: Image.Image, keep: float) -> Image.Image:
    w, h = image.size
    dx, dy = round(w * (1 - keep) / 2), round(h * (1 - keep) / 2)
    return image.crop((dx, dy, w - dx, h - dy))


def write_shard(path: Path, samples: list[dict]) -> None:
    """img2dataset's layout: KEY.jpg, KEY.txt, KEY.json per sample."""
    with tarfile.open(path, "w") as tar:
        for s in samples:
            meta = {"uid": s["uid"], "url": s["url"], "caption": s["uid"], "key": s["key"]}
            members = [("txt", s["uid"].encode()), ("json", json.dumps(meta).encode())]
            if s["image"] is not None:
                members.insert(0, (s.get("ext", "jpg"), s["image"]))
            for ext, data in members:
                info = tarfile.TarInfo(f"{s['key']}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """Input shards: every tile once (uid tNNN), planted copies of some (uids z-...: larger, so
    the original is the one kept), the astronaut whole; an eval set holding one tile
    re-encoded; blocklists naming three tiles."""
    root = tmp_path_factory.mktemp("filter")
    tiles = photo_tiles()
    good = [i for i, t in enumerate(tiles) if quality(t) >= hashes.PDQ_MIN_QUALITY]
    exact, q60, resized, cropped, in_eval, sha_blocked, url_blocked, domain_blocked = good[3:50:6][
        :8
    ]
    samples = [
        {"uid": f"t{i:03d}", "url": f"https://img.example.org/tile/{i}.jpg", "image": jpeg(t)}
        for i, t in enumerate(tiles)
    ]
    samples[domain_blocked]["url"] = f"https://cdn.blocked.example/{domain_blocked}.jpg"
    original = {s["uid"]: s for s in samples}
    w, h = tiles[resized].size
    copies = {
        "z-exact": samples[exact]["image"],
        "z-q60": jpeg(Image.open(io.BytesIO(samples[q60]["image"])), 60),
        "z-resized": jpeg(tiles[resized].resize((int(w * 0.9), int(h * 0.9)), Image.BICUBIC)),
        "z-cropped": jpeg(centre_crop(tiles[cropped], 0.95)),
    }
    sources = {"z-exact": exact, "z-q60": q60, "z-resized": resized, "z-cropped": cropped}
    for uid, data in copies.items():
        samples.append({"uid": uid, "url": f"https://mirror.example.net/{uid}.jpg", "image": data})
    with Image.open(loopback.bundled_photo_dir() / "astronaut.png") as astronaut:
        astronaut_png = io.BytesIO()
        astronaut.convert("RGB").save(astronaut_png, "PNG")
    samples.append(
        {
            "uid": "face",
            "url": "https://nasa.example.gov/a.png",
            "image": astronaut_png.getvalue(),
            "ext": "png",
        }  # fmt: skip
    )
    truncated = samples[0]["image"][: len(samples[0]["image"]) // 2]
    samples.append({"uid": "bad-truncated", "url": "https://x.example/t.jpg", "image": truncated})
    samples.append({"uid": "bad-no-image", "url": "https://x.example/n.jpg", "image": None})
    # spread over the shards so that every planted copy sits in another shard than its original
    order = sorted(samples, key=lambda s: s["uid"])
    shards_dir = root / "shards"
    shards_dir.mkdir()
    for n in range(SHARDS):
        part = order[n::SHARDS]
        for k, s in enumerate(part):
            s["key"] = f"{n:05d}{k:04d}"
        write_shard(shards_dir / f"{n:05d}.tar", part)
    eval_dir = root / "evalset"
    eval_image = jpeg(tiles[in_eval], 80)
    write_benchmark_dir(
        eval_dir, [{"__key__": "s0000", "jpg": eval_image, "cls": b"3"}], "classification"
    )
    (root / "hashes.txt").write_text(
        "# sha256 of one tile\n" + hashes.sha256_hex(samples[sha_blocked]["image"]) + "\n"
    )
    (root / "urls.txt").write_text(f"{samples[url_blocked]['url']}\nblocked.example\n")
    return {
        "root": root,
        "tiles": len(tiles),
        "original": original,
        "sources": {uid: f"t{i:03d}" for uid, i in sources.items()},
        "in_eval": f"t{in_eval:03d}",
        "sha_blocked": f"t{sha_blocked:03d}",
        "url_blocked": f"t{url_blocked:03d}",
        "domain_blocked": f"t{domain_blocked:03d}",
        "input_samples": len(samples),
    }


def config_for(planted, output: Path, **overrides) -> FilterConfig:
    root = planted["root"]
    settings = dict(
        shards=str(root / "shards"),
        output=str(output),
        eval_sets=(str(root / "evalset"),),
        block_hashes=str(root / "hashes.txt"),
        block_urls=str(root / "urls.txt"),
    )
    return FilterConfig(**(settings | overrides))


@pytest.fixture(scope="module")
def filtered(spark, planted):
    out = planted["root"] / "out"
    report = run(config_for(planted, out), spark=spark)
    decisions = pq.read_table(out / "image_filter").to_pylist()
    return out, report, {d["uid"]: d for d in decisions}


def read_tars(folder: Path) -> dict[str, dict[str, bytes]]:
    """{uid: {ext: bytes}} of every sample of the folder's tars."""
    found = {}
    for path in sorted(folder.glob("*.tar")):
        members: dict[str, dict[str, bytes]] = {}
        with tarfile.open(path) as tar:
            for member in tar:
                key, ext = member.name.split(".", 1)
                members.setdefault(key, {})[ext] = tar.extractfile(member).read()
        for parts in members.values():
            found[json.loads(parts["json"])["uid"]] = parts
    return found


def test_planted_copies_are_removed_and_point_to_the_kept_original(filtered, planted):
    out, report, by_uid = filtered
    for uid, source in planted["sources"].items():
        row = by_uid[uid]
        assert row["decision"] == "drop", uid
        assert row["reason"] == ("exact_duplicate" if uid == "z-exact" else "near_duplicate"), uid
        assert row["duplicate_of"] == source, uid
        assert by_uid[source]["decision"] == "keep", source
    kept = read_tars(out / "shards")
    assert not set(planted["sources"]) & set(kept)
    assert set(planted["sources"].values()) <= set(kept)


def test_no_distinct_tile_is_removed_as_a_duplicate(filtered, planted):
    """No false positive: every tile of every photograph is its own picture."""
    _, _, by_uid = filtered
    tiles = [by_uid[f"t{i:03d}"] for i in range(planted["tiles"])]
    duplicates = [t["uid"] for t in tiles if t["reason"] in ("exact_duplicate", "near_duplicate")]
    assert duplicates == []


def test_evaluation_image_is_removed_and_listed(filtered, planted):
    out, report, by_uid = filtered
    uid = planted["in_eval"]
    assert by_uid[uid]["reason"] == "eval_contamination"
    listed = report.manifest["eval_contamination"]
    assert [(c["eval_set"], c["eval_key"], c["uid"]) for c in listed] == [
        ("evalset", "0/s0000", uid)
    ]
    assert 0 < listed[0]["distance"] <= hashes.DEFAULT_NEAR_DUPLICATE_BITS  # re-encoded, not equal
    manifest = json.loads((out / "shards" / "manifest.json").read_text())
    assert manifest["eval_contamination"] == listed


def test_blocklisted_hash_url_and_domain_are_dropped_and_counted(filtered, planted):
    out, report, by_uid = filtered
    assert by_uid[planted["sha_blocked"]]["reason"] == "blocked_sha256"
    assert by_uid[planted["url_blocked"]]["reason"] == "blocked_url"
    assert by_uid[planted["domain_blocked"]]["reason"] == "blocked_domain"
    drops = report.manifest["drops"]
    for reason in ("blocked_sha256", "blocked_url", "blocked_domain", "eval_contamination"):
        assert drops[reason] == 1, reason
    assert drops["near_duplicate"] == 3 and drops["exact_duplicate"] == 1
    assert report.manifest["input_samples"] == planted["input_samples"]
    assert report.manifest["kept"] + sum(drops.values()) == planted["input_samples"]


def test_undecodable_and_missing_images_are_dropped_with_their_reason(filtered):
    _, report, by_uid = filtered
    assert by_uid["bad-truncated"]["reason"] == "decode_error"
    assert by_uid["bad-truncated"]["sha256"] is not None  # the bytes were read and hashed
    assert by_uid["bad-no-image"]["reason"] == "no_image"
    assert report.manifest["drops"]["decode_error"] == 1
    assert report.manifest["drops"]["no_image"] == 1


def test_a_pdq_blocklist_entry_drops_the_image_and_its_re_encodings(filtered, planted, tmp_path):
    """A PDQ hash (64 hex, as hash-sharing lists carry it) blocks the image within 31 bits."""
    _, _, by_uid = filtered
    target = planted["sources"]["z-q60"]
    listing = tmp_path / "pdq.txt"
    listing.write_text(f"pdq:{by_uid[target]['pdq']}\n")
    analysis = pq.read_table(filtered[0] / "image_filter").drop_columns(
        ["decision", "reason", "duplicate_of"]
    )
    rules = Rules(nsfw_threshold=None, hash_list=read_hash_list(str(listing)))
    decided = {r["uid"]: r for r in decide(analysis, rules).table.to_pylist()}
    assert decided[target]["reason"] == "blocked_pdq"
    assert decided["z-q60"]["reason"] == "blocked_pdq"  # quality 60 is within 31 bits
    assert sum(r["reason"] == "blocked_pdq" for r in decided.values()) == 2


def test_faces_are_blurred_and_the_rest_of_the_image_is_untouched(filtered, planted):
    out, _, by_uid = filtered
    row = by_uid["face"]
    assert row["decision"] == "keep" and row["face_boxes"]
    with Image.open(loopback.bundled_photo_dir() / "astronaut.png") as image:
        before = np.asarray(image.convert("RGB")).astype(int)
    sample = read_tars(out / "shards")["face"]
    after = np.asarray(Image.open(io.BytesIO(sample["png"])).convert("RGB")).astype(int)
    assert json.loads(sample["json"])["face_boxes"] == row["face_boxes"]
    x0, y0, x1, y1 = max(row["face_boxes"], key=lambda b: (b[2] - b[0]) * (b[3] - b[1]))
    assert after[y0:y1, x0:x1].var() < 0.6 * before[y0:y1, x0:x1].var()
    grow, sigma = faces.blur_radius((before.shape[1], before.shape[0]), row["face_boxes"])
    reach = int(np.ceil(grow + 3 * sigma))
    outside = np.ones(before.shape[:2], dtype=bool)
    for bx0, by0, bx1, by1 in row["face_boxes"]:
        outside[max(0, by0 - reach) : by1 + reach, max(0, bx0 - reach) : bx1 + reach] = False
    assert outside.mean() > 0.5
    assert np.array_equal(after[outside], before[outside])  # PNG in, PNG out: lossless
    # a tile without a face is copied byte for byte
    untouched = next(
        u for u, r in by_uid.items() if r["decision"] == "keep" and not r["face_boxes"]
    )
    assert read_tars(out / "shards")[untouched]["jpg"] == planted["original"][untouched]["image"]


def test_jpeg_faces_are_re_encoded_with_the_input_quantization():
    from curation.image_filter.rewrite import reencode_blurred

    with Image.open(loopback.bundled_photo_dir() / "astronaut.png") as image:
        data = jpeg(image, 70)
    source = Image.open(io.BytesIO(data))
    boxes = faces.detect_faces(np.asarray(source.convert("RGB")))
    assert boxes
    out = Image.open(io.BytesIO(reencode_blurred(data, boxes)))
    assert out.format == "JPEG" and out.quantization == source.quantization


def test_nsfw_scores_run_offline_and_the_threshold_bounds_hold(filtered):
    """NudeNet's model ran inside the job (a score per image); a threshold of 0 flags every
    image no earlier rule dropped, 1 flags none."""
    out, _, by_uid = filtered
    scores = [r["nsfw_score"] for r in by_uid.values() if not r["error"]]
    assert len(scores) == len(by_uid) - 2 and all(0.0 < s < 1.0 for s in scores)
    analysis = pq.read_table(out / "image_filter").drop_columns(
        ["decision", "reason", "duplicate_of"]
    )
    everything = {r["uid"]: r["reason"] for r in decide(analysis, Rules(0.0)).table.to_pylist()}
    nothing = {r["uid"]: r["reason"] for r in decide(analysis, Rules(1.0)).table.to_pylist()}
    assert set(everything.values()) == {"nsfw", "decode_error", "no_image"}
    assert "nsfw" not in set(nothing.values())


def test_an_nsfw_threshold_of_zero_drops_every_image_through_the_job(spark, filtered, planted):
    """The job end to end with --nsfw-threshold 0: it reuses the analysis (the threshold is a
    decision, not a measurement) and writes no sample; every image no earlier rule took is
    counted as nsfw."""
    import shutil

    out = planted["root"] / "nsfw0"
    shutil.copytree(filtered[0] / "_analysis", out / "_analysis")
    report = run(config_for(planted, out, nsfw_threshold=0.0), spark=spark)
    assert report.analyzed == [] and report.manifest["kept"] == 0
    assert report.manifest["total_samples"] == 0 and not list((out / "shards").glob("*.tar"))
    earlier = {"blocked_sha256", "blocked_url", "blocked_domain", "eval_contamination"}
    earlier |= {"decode_error", "no_image"}
    drops = report.manifest["drops"]
    assert set(drops) == earlier | {"nsfw"}
    assert drops["nsfw"] == planted["input_samples"] - sum(drops[r] for r in earlier)
    # --overwrite starts over: the copied analysis is not reused
    again = run(config_for(planted, out, nsfw_threshold=0.0, overwrite=True), spark=spark)
    assert again.analyzed == [f"{n:05d}" for n in range(SHARDS)]
    assert again.manifest["drops"] == drops


def test_decisions_do_not_depend_on_shard_order(filtered, planted):
    out, _, by_uid = filtered
    analysis = pq.read_table(out / "image_filter").drop_columns(
        ["decision", "reason", "duplicate_of"]
    )
    reversed_rows = analysis.take(list(range(analysis.num_rows))[::-1])
    root = planted["root"]
    rules = Rules(
        0.5,
        hash_list=read_hash_list(str(root / "hashes.txt")),
        url_list=read_url_list(str(root / "urls.txt")),
    )
    evals = hash_eval_sets([str(root / "evalset")])
    again = decide(reversed_rows, rules, evals).table.to_pylist()
    assert {r["uid"]: (r["reason"], r["duplicate_of"]) for r in again} == {
        u: (r["reason"], r["duplicate_of"]) for u, r in by_uid.items()
    }


def test_output_layout_sizes_and_summary(filtered):
    out, report, by_uid = filtered
    sizes = json.loads((out / "shards" / "sizes.json").read_text())
    kept = read_tars(out / "shards")
    assert sum(sizes.values()) == len(kept) == report.manifest["kept"]
    assert set(kept) == {u for u, r in by_uid.items() if r["decision"] == "keep"}
    for name in sizes:
        meta = pq.read_table(out / "shards" / name.replace(".tar", ".parquet"))
        assert meta.num_rows == sizes[name]
        assert set(meta["status"].to_pylist()) == {"success"}
    assert report.summary().startswith(f"[filter] kept {report.manifest['kept']} of ")


def test_rerun_is_a_no_op(spark, filtered, planted):
    out, _, _ = filtered
    tars = {p.name: p.stat().st_mtime_ns for p in (out / "shards").glob("*.tar")}
    report = run(config_for(planted, out), spark=spark)
    assert report.analyzed == [] and report.written == []
    assert {p.name: p.stat().st_mtime_ns for p in (out / "shards").glob("*.tar")} == tars


def test_a_killed_run_resumes_and_finishes_only_the_missing_shards(spark, filtered, planted):
    """SIGKILL the job's process group once its first shard is analyzed; the rerun analyzes only
    the shards that had no finished analysis, and ends with the uninterrupted run's decisions
    and shards."""
    out = planted["root"] / "killed"
    root = planted["root"]
    argv = [sys.executable, str(JOB), "--shards", str(root / "shards"), "--output", str(out)]
    argv += ["--eval-sets", str(root / "evalset"), "--block-hashes", str(root / "hashes.txt")]
    argv += ["--block-urls", str(root / "urls.txt")]
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1"}
    job = subprocess.Popen(argv, env=env, start_new_session=True, stdout=subprocess.DEVNULL)
    analysis = out / "_analysis"
    deadline = time.monotonic() + 240
    while not list(analysis.glob("*.done")) and job.poll() is None:
        assert time.monotonic() < deadline, "the job analyzed nothing in 240 s"
        time.sleep(0.05)
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    # PySpark's worker daemon runs in its own process group: a task it was running may still
    # finish its shard after the driver and the JVM are gone. Wait until nothing changes.
    done_before, stable_since = None, time.monotonic()
    while time.monotonic() - stable_since < 5:
        assert time.monotonic() < deadline, "the killed job's files kept changing"
        now = {p.name[:-5] for p in analysis.glob("*.done")}
        if now != done_before:
            done_before, stable_since = now, time.monotonic()
        time.sleep(0.2)
    assert 0 < len(done_before) < SHARDS
    assert not (out / "shards" / "manifest.json").exists()
    report = run(config_for(planted, out), spark=spark)
    assert report.analyzed == sorted({f"{n:05d}" for n in range(SHARDS)} - done_before)
    first, _, by_uid = filtered
    again = {r["uid"]: r for r in pq.read_table(out / "image_filter").to_pylist()}
    assert again == by_uid
    assert read_tars(out / "shards") == read_tars(first / "shards")


def test_bad_lists_and_flags_are_one_line_errors(tmp_path, planted):
    bad = tmp_path / "bad.txt"
    bad.write_text("deadbeef\n")
    for argv in (
        ["--shards", str(tmp_path / "none"), "--output", str(tmp_path / "o")],
        ["--shards", str(planted["root"] / "shards"), "--output", str(tmp_path / "o"),
         "--block-hashes", str(bad)],
        ["--shards", str(planted["root"] / "shards"), "--output", str(tmp_path / "o"),
         "--nsfw-threshold", "2"],
    ):  # fmt: skip
        result = subprocess.run(
            [sys.executable, str(JOB), *argv], capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 2, (argv, result.stderr)
        line = result.stderr.strip().splitlines()[-1]
        assert line.startswith("filter_images: error:"), result.stderr
        if "--block-hashes" in argv:
            assert "bad.txt, line 1: not an MD5" in line
    helptext = subprocess.run(
        [sys.executable, str(JOB), "--help"], capture_output=True, text=True
    ).stdout
    flags = ["--eval-sets", "--block-hashes", "--block-urls", "--nsfw-threshold", "--no-nsfw"]
    flags += ["--no-blur-faces", "--near-duplicate-bits", "--overwrite"]
    assert all(flag in helptext for flag in flags)


def test_url_list_matches_normalised_urls_and_subdomains(tmp_path):
    listing = tmp_path / "urls.txt"
    listing.write_text("HTTPS://Example.org:443/a.jpg#frag\nbad.example\n")
    urls = read_url_list(str(listing))
    assert urls.reason("https://example.org/a.jpg") == "blocked_url"
    assert urls.reason("http://cdn.bad.example/x.jpg") == "blocked_domain"
    assert urls.reason("http://notbad.example/x.jpg") is None
    assert urls.reason("https://example.org/b.jpg") is None


def test_shards_and_lists_on_an_object_store_give_the_local_decisions(spark, s3, planted, filtered):
    """Issue 33, item 1: the stage reads shards, eval sets and lists from s3:// and writes its
    shards and table there, with the local run's decisions and samples."""
    root = planted["root"]
    config = config_for(
        planted,
        s3.uri("filter", "out"),
        shards=s3.upload(root / "shards", "filter", "shards"),
        eval_sets=(s3.upload(root / "evalset", "filter", "evalset"),),
        block_hashes=s3.upload(root / "hashes.txt", "filter", "hashes.txt"),
        block_urls=s3.upload(root / "urls.txt", "filter", "urls.txt"),
    )
    report = run(config, spark=spark)
    local, local_report, by_uid = filtered
    assert report.manifest["drops"] == local_report.manifest["drops"]
    copy = s3.download("filter", "out", to=Path(str(root / "from_s3")))
    remote = {r["uid"]: r for r in pq.read_table(copy / "image_filter").to_pylist()}
    assert {u: r["reason"] for u, r in remote.items()} == {
        u: r["reason"] for u, r in by_uid.items()
    }
    assert read_tars(copy / "shards") == read_tars(local / "shards")
    assert "sizes.json" in s3.keys("filter", "out", "shards")


def test_the_report_lists_the_filter_drop_reasons(filtered, tmp_path):
    from curation.report.job import image_drops

    out, report, _ = filtered
    run_dir = tmp_path / "run"
    (run_dir / "filtered").mkdir(parents=True)
    (run_dir / "filtered" / "shards").symlink_to(out / "shards")
    frame = image_drops(str(run_dir))
    rows = {(r.stage, r.what): r.images for r in frame.itertuples()}
    for reason, count in report.manifest["drops"].items():
        assert rows[("image filter", reason)] == count
    assert rows[("image filter", "kept")] == report.manifest["kept"]
    assert image_drops(str(tmp_path / "nothing")) is None
