"""Shard export: real img2dataset against a loopback server of real photographs and bad URLs."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import shutil
import socket
import struct
import tarfile
import zlib
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from PIL import Image

from curation.core import samples
from curation.shards import export as shards
from curation.shards import loopback

pytest.importorskip("img2dataset")
pytest.importorskip("skimage")

LANGS = ("en", "ja", "ar", "vi")
JOB = Path(__file__).resolve().parents[1] / "jobs" / "export_shards.py"


def bomb_png(width: int = 20000, height: int = 20000) -> bytes:
    """A valid grayscale PNG of width x height zeros: ~400 KB that decodes to 400 MB."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    packer = zlib.compressobj(9)
    row = b"\x00" * (width + 1)  # filter byte + pixels
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The served folder: the CC0 photographs plus one file per failure case."""
    root = tmp_path_factory.mktemp("site")
    photos = loopback.bundled_photo_dir()
    for name in loopback.BUNDLED_PHOTOS:
        shutil.copy(photos / name, root / name)
    rocket = (photos / "rocket.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(rocket[: len(rocket) // 2])
    (root / "not_an_image.jpg").write_bytes(b"<html><body>Sorry, moved</body></html>\n" * 20)
    (root / "bomb.png").write_bytes(bomb_png())
    shutil.copy(photos / "coffee.png", root / "noai.png")
    shutil.copy(photos / "brick.png", root / "noimageai_for_us.png")
    shutil.copy(photos / "astronaut.png", root / "noai_for_other_bot.png")
    shutil.copy(photos / "chelsea.png", root / "slow.png")
    return root


UA_TOKEN = "metaclip-test"
ROBOTS_HEADERS = {
    "/noai.png": {"X-Robots-Tag": "noai"},
    "/noimageai_for_us.png": {"X-Robots-Tag": f"{UA_TOKEN}: noimageai, nofollow"},
    "/noai_for_other_bot.png": {"X-Robots-Tag": "otherbot: noai"},  # not addressed to us
}
GOOD = (*loopback.BUNDLED_PHOTOS, "noai_for_other_bot.png")
# name -> expected failure category (img2dataset's reason, mapped by reason_category)
FAILURES = {
    "missing.jpg": "http_404",
    "slow.png": "timeout",
    "truncated.jpg": "decode_error",
    "not_an_image.jpg": "decode_error",
    "bomb.png": "image_too_large",
    "noai.png": "x_robots_tag",
    "noimageai_for_us.png": "x_robots_tag",
}
UNFETCHABLE = {
    "file:///etc/passwd": "unsupported_scheme",
    "ftp://example.org/a.jpg": ("unsupported_scheme"),
}


def captions() -> dict[str, list[str]]:
    return {
        lang: [row["caption_reference_description"] for row in samples.wit_rows(lang)][:20]
        for lang in LANGS
    }


def curated_rows(base_url: str) -> list[dict]:
    """One row per photograph and per failure case, real WIT captions in four languages."""
    texts = captions()
    names = list(GOOD) + list(FAILURES)
    rows = []
    for i, name in enumerate(names):
        lang = LANGS[i % len(LANGS)]
        rows.append(
            {
                "uid": f"{(i * 2654435761) % 2**32:08x}",
                "url": f"{base_url}/{name}",
                "text": texts[lang][i],
                "lang": lang,
                "entry_ids": [i, 100 + i],
                "keep_prob": 1.0,
            }
        )
    for j, url in enumerate(UNFETCHABLE):
        rows.append({**rows[j], "uid": f"zz{j}", "url": url})
    return rows


def write_curated(rows: list[dict], path: Path, fmt: str = "parquet") -> str:
    table = pa.Table.from_pylist(
        rows,
        schema=pa.schema(
            [
                ("uid", pa.string()),
                ("url", pa.string()),
                ("text", pa.string()),
                ("lang", pa.string()),
                ("entry_ids", pa.list_(pa.int32())),
                ("keep_prob", pa.float64()),
            ]
        ),
    )
    if fmt == "delta":
        from deltalake import write_deltalake

        write_deltalake(str(path), table, partition_by=["lang"])
    else:
        ds.write_dataset(
            table, path, format="parquet", partitioning=["lang"], partitioning_flavor="hive"
        )
        (path / "_SUCCESS").write_text("")
    (path / "run.json").write_text(json.dumps({"run": "fixture", "seed": 0}))
    return str(path)


def read_tars(out: Path) -> dict[str, dict]:
    """Every sample in every shard, by uid: {'shard', 'jpg', 'txt', 'json'}."""
    found = {}
    for tar_path in sorted(out.glob("*.tar")):
        members: dict[str, dict] = {}
        with tarfile.open(tar_path) as tar:
            for member in tar.getmembers():
                key, ext = member.name.split(".", 1)
                members.setdefault(key, {})[ext] = tar.extractfile(member).read()
        for parts in members.values():
            meta = json.loads(parts["json"])
            found[meta["uid"]] = {
                "shard": tar_path.name,
                "jpg": parts["jpg"],
                "txt": parts["txt"].decode(),
                "json": meta,
            }
    return found


def config_for(curated: str, out: Path, **overrides) -> shards.ExportConfig:
    settings = dict(
        curated=curated,
        output=str(out),
        samples_per_shard=4,
        processes=2,
        threads=8,
        timeout=1,
        allow_local=True,
        user_agent_token=UA_TOKEN,
    )
    settings.update(overrides)
    return shards.ExportConfig(**settings)


@pytest.fixture(scope="module")
def exported(site, tmp_path_factory):
    """One real export, shared by the assertions below; the server lives for the module."""
    delays = {"/slow.png": 4.0}
    seen = []
    with loopback.serve_directory(
        site, headers=ROBOTS_HEADERS, delays=delays, lifetime_s=120, seen=seen
    ) as base:
        work = tmp_path_factory.mktemp("export")
        rows = curated_rows(base)
        curated = write_curated(rows, work / "curated")
        out = work / "shards"
        manifest, built = shards.export_shards(config_for(curated, out))
        first = {"manifest": manifest, "built": built, "samples": read_tars(out), "seen": seen}
        yield {"rows": rows, "out": out, "curated": curated, "first": first, "base": base}


def test_every_good_photo_is_in_a_shard_with_caption_and_json(exported, site):
    samples_by_uid = exported["first"]["samples"]
    good = [r for r in exported["rows"] if r["url"].rsplit("/", 1)[-1] in GOOD]
    assert len(good) == len(GOOD)
    assert sorted(samples_by_uid) == sorted(r["uid"] for r in good)
    for row in good:
        sample = samples_by_uid[row["uid"]]
        assert sample["txt"] == row["text"]
        meta = sample["json"]
        assert (meta["lang"], meta["entry_ids"], meta["status"]) == (
            row["lang"],
            row["entry_ids"],
            "success",
        )
        with Image.open(site / row["url"].rsplit("/", 1)[-1]) as original:
            assert (meta["original_width"], meta["original_height"]) == original.size
        image = Image.open(io.BytesIO(sample["jpg"]))
        assert image.format == "JPEG"
        assert min(image.size) == 256  # keep_ratio: shorter side resized, nothing cropped
        ratio = meta["original_width"] / meta["original_height"]
        assert image.size[0] / image.size[1] == pytest.approx(ratio, rel=0.02)
        assert "exif" not in meta or meta["exif"] is None


def test_every_failure_is_counted_with_its_reason(exported):
    manifest = exported["first"]["manifest"]
    download = manifest["download"]
    assert download["failure_categories"] == dict(Counter(FAILURES.values()))
    assert download["failed_to_download"] + download["failed_to_resize"] == len(FAILURES)
    assert download["attempted"] == len(GOOD) + len(FAILURES)
    assert manifest["url_filter_drops"] == dict(Counter(UNFETCHABLE.values()))
    assert manifest["input_rows"] == len(exported["rows"])
    # the per-shard stats img2dataset wrote say the same
    per_shard = Counter()
    for stats in exported["out"].glob("*_stats.json"):
        per_shard.update(json.loads(stats.read_text())["status_dict"])
    assert per_shard.pop("success") == len(GOOD)
    assert sum(per_shard.values()) == len(FAILURES)
    assert any("404" in reason for reason in per_shard)


def test_every_request_carries_the_configured_user_agent(exported):
    seen = exported["first"]["seen"]
    assert {path for path, _ in seen} >= {f"/{name}" for name in GOOD}
    assert all(f"compatible; {UA_TOKEN};" in agent for _, agent in seen)


def test_sizes_and_manifest_add_up(exported):
    out = exported["out"]
    sizes = json.loads((out / "sizes.json").read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    samples_by_uid = exported["first"]["samples"]
    assert sorted(sizes) == sorted(p.name for p in out.glob("*.tar"))
    assert sum(sizes.values()) == manifest["total_samples"] == len(samples_by_uid)
    assert sizes == dict(Counter(s["shard"] for s in samples_by_uid.values()))
    assert manifest["languages"] == dict(
        sorted(Counter(s["json"]["lang"] for s in samples_by_uid.values()).items())
    )
    assert manifest["source"]["run"] == {"run": "fixture", "seed": 0}
    assert manifest["incomplete_shards"] == []


def test_rerun_after_deleting_a_shard_rebuilds_only_that_shard(exported):
    out = exported["out"]
    first = exported["first"]
    assert len(first["built"]) == len(list(out.glob("*.tar"))) > 2
    victim = sorted(out.glob("*.tar"))[1]
    others = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar") if p != victim}
    victim.unlink()
    manifest, built = shards.export_shards(config_for(exported["curated"], out))
    assert built == [victim.stem]
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar") if p != victim} == others
    second = read_tars(out)
    assert {u: s["shard"] for u, s in second.items()} == {
        u: s["shard"] for u, s in first["samples"].items()
    }
    assert manifest["total_samples"] == first["manifest"]["total_samples"]
    assert manifest["download"] == first["manifest"]["download"]


def test_a_truncated_shard_is_found_and_rebuilt(exported):
    """Issue 36, case 6: a tar cut short (its stats file still there) used to pass for done
    ('every shard is already done', sizes.json keeping the old count); now it is rebuilt."""
    out = exported["out"]
    first = exported["first"]
    victim = sorted(out.glob("*.tar"))[0]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    manifest, built = shards.export_shards(config_for(exported["curated"], out))
    assert built == [victim.stem]
    with tarfile.open(victim) as tar:  # whole again: readable to its end
        assert len(tar.getmembers()) > 0
    assert {u: s["shard"] for u, s in read_tars(out).items()} == {
        u: s["shard"] for u, s in first["samples"].items()
    }
    assert manifest["total_samples"] == first["manifest"]["total_samples"]


def test_nothing_local_is_fetched_without_allow_local(exported, tmp_path):
    with pytest.raises(shards.ExportError, match="nothing to fetch"):
        shards.export_shards(config_for(exported["curated"], tmp_path / "o", allow_local=False))
    assert not (tmp_path / "o").exists()


def test_a_different_curated_input_is_refused_on_the_same_output(exported, tmp_path):
    rows = exported["rows"][:-3]
    curated = write_curated(rows, tmp_path / "curated")
    with pytest.raises(shards.ExportError, match="different curated input"):
        shards.export_shards(config_for(curated, exported["out"]))


@pytest.mark.parametrize(
    "url, reason",
    [
        ("https://upload.wikimedia.org/a.jpg", None),
        ("http://93.184.216.34/x.png", None),
        ("HTTPS://Example.ORG/a.jpg", None),
        ("ftp://example.org/a.jpg", "unsupported_scheme"),
        ("file:///etc/passwd", "unsupported_scheme"),
        ("data:image/png;base64,AAAA", "unsupported_scheme"),
        ("javascript:alert(1)", "unsupported_scheme"),
        ("", "empty_url"),
        (None, "empty_url"),
        ("http:///nohost.jpg", "missing_host"),
        ("http://[::1", "malformed_url"),
        ("http://127.0.0.1:8080/a.jpg", "private_address"),
        ("http://localhost/a.jpg", "private_address"),
        ("http://api.localhost/a.jpg", "private_address"),
        ("http://10.1.2.3/a.jpg", "private_address"),
        ("http://192.168.0.1/a.jpg", "private_address"),
        ("http://172.16.5.4/a.jpg", "private_address"),
        ("http://169.254.169.254/latest/meta-data", "private_address"),
        ("http://100.64.0.1/a.jpg", "private_address"),
        ("http://0.0.0.0/a.jpg", "private_address"),
        ("http://[::1]/a.jpg", "private_address"),
        ("http://[fd00::1]/a.jpg", "private_address"),
        ("http://[::ffff:127.0.0.1]/a.jpg", "private_address"),
        ("http://2130706433/a.jpg", "private_address"),
        ("http://0x7f000001/a.jpg", "private_address"),
        ("http://127.1/a.jpg", "private_address"),
        ("http://224.0.0.1/a.jpg", "private_address"),
    ],
)
def test_url_drop_reason(url, reason):
    assert shards.url_drop_reason(url) == reason


def test_resolve_hosts_drops_names_that_point_inside():
    """Names are only judged once resolved: this machine's own hostname resolves to a loopback or
    private address; a name that does not resolve is dropped too."""
    import ipaddress

    inside = socket.gethostname()
    addresses = {
        ipaddress.ip_address(i[4][0].split("%")[0]) for i in socket.getaddrinfo(inside, None)
    }
    if all(a.is_global for a in addresses):
        pytest.skip(f"{inside} resolves to a public address here")
    rows = [
        {"uid": "a", "url": f"http://{inside}/a.jpg", "text": "x", "lang": "en", "entry_ids": []},
        {"uid": "b", "url": "http://no-such-host.invalid/b.jpg", "text": "y", "lang": "en"},
    ]
    rows[1]["entry_ids"] = []
    table = pa.Table.from_pylist(rows)
    kept, drops = shards.filter_urls(table)
    assert kept.num_rows == 2 and not drops  # literal checks alone cannot see either
    kept, drops = shards.filter_urls(table, resolve_hosts=True)
    assert kept.num_rows == 0
    assert drops == Counter({"private_address": 1, "unresolvable_host": 1})


def test_allow_local_still_refuses_other_schemes():
    assert shards.url_drop_reason("http://127.0.0.1/a.jpg", allow_local=True) is None
    assert shards.url_drop_reason("file:///etc/passwd", allow_local=True) == "unsupported_scheme"


def test_delta_and_parquet_curated_read_the_same_and_order_is_stable(tmp_path):
    rows = curated_rows("https://images.example.org")
    parquet = write_curated(rows, tmp_path / "p")
    delta = write_curated(list(reversed(rows)), tmp_path / "d", fmt="delta")
    from_parquet, run = shards.read_curated(parquet)
    from_delta, _ = shards.read_curated(delta)
    assert run == {"run": "fixture", "seed": 0}
    kept_p, drops_p = shards.filter_urls(from_parquet)
    kept_d, drops_d = shards.filter_urls(from_delta)
    assert kept_p.equals(kept_d)
    assert drops_p == drops_d == Counter(UNFETCHABLE.values())
    assert kept_p["uid"].to_pylist() == sorted(
        r["uid"] for r in rows if r["url"].startswith("https")
    )


def test_languages_read_only_their_partitions(tmp_path):
    rows = curated_rows("https://images.example.org")
    for fmt in ("parquet", "delta"):
        curated = write_curated(rows, tmp_path / fmt, fmt=fmt)
        picked = tuple(sorted({r["lang"] for r in rows})[:2])
        table, _ = shards.read_curated(curated, languages=picked)
        assert sorted(table["uid"].to_pylist()) == sorted(
            r["uid"] for r in rows if r["lang"] in picked
        ), fmt
        assert set(table["lang"].to_pylist()) == set(picked)
        assert shards.read_curated(curated, languages=("xx",))[0].num_rows == 0


def test_incomplete_or_malformed_curated_is_a_clear_error(tmp_path):
    curated = write_curated(curated_rows("https://x.org"), tmp_path / "c")
    (tmp_path / "c" / "_SUCCESS").unlink()
    with pytest.raises(shards.ExportError, match="_SUCCESS"):
        shards.read_curated(curated)
    bad = tmp_path / "bad"
    ds.write_dataset(pa.table({"url": ["https://x.org/a.jpg"]}), bad, format="parquet")
    (bad / "_SUCCESS").write_text("")
    with pytest.raises(shards.ExportError, match="lacks column"):
        shards.read_curated(str(bad))
    with pytest.raises(shards.ExportError, match="not found"):
        shards.read_curated(str(tmp_path / "nowhere"))


def test_run_json_next_to_curated_and_an_unfinished_run(tmp_path):
    """jobs/curate.py layout: RUN/curated/, RUN/_stages/, then RUN/run.json and RUN/_SUCCESS."""
    run_dir = tmp_path / "run"
    curated = write_curated(curated_rows("https://x.org"), run_dir / "curated")
    (run_dir / "curated" / "run.json").unlink()
    (run_dir / "_stages").mkdir()
    with pytest.raises(shards.ExportError, match="has not finished"):
        shards.read_curated(curated)
    (run_dir / "run.json").write_text(json.dumps({"seed": 7}))
    (run_dir / "_SUCCESS").write_text("")
    table, run = shards.read_curated(curated)
    assert run == {"seed": 7} and table.num_rows == len(curated_rows("https://x.org"))


def test_job_cli_help_and_one_line_error(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("export_shards", JOB)
    export_shards = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(export_shards)
    with pytest.raises(SystemExit):
        export_shards.main(["--help"])
    helptext = capsys.readouterr().out
    for flag in ("--curated", "--output", "--allow-local", "--user-agent-token", "--serve-local"):
        assert flag in helptext
    assert export_shards.main(["--curated", str(tmp_path / "none"), "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("export_shards: error:") and "\n" not in err


def test_pyspark_distributor_on_the_shared_session(spark, site, tmp_path):
    """The cluster path: img2dataset hands shards to the active Spark session's executors."""
    with loopback.serve_directory(site, lifetime_s=120) as base:
        rows = [r for r in curated_rows(base) if r["url"].endswith(("chelsea.png", "rocket.jpg"))]
        rows += [{**rows[0], "uid": "ffff0001", "url": f"{base}/missing.jpg"}]
        curated = write_curated(rows, tmp_path / "curated")
        out = tmp_path / "shards"
        manifest, built = shards.export_shards(
            config_for(curated, out, distributor="pyspark", samples_per_shard=3)
        )
    assert built == ["00000"]
    assert manifest["total_samples"] == 2
    assert manifest["download"]["failure_categories"] == {"http_404": 1}
    assert sorted(read_tars(out)) == sorted(r["uid"] for r in rows[:2])


def test_job_serve_local_demo_mode_and_idempotent_rerun(site, tmp_path, capsys):
    """`--serve-local DIR` maps the curated (public) URLs onto DIR's photos on a fresh port each
    run; the rerun finds every shard done and leaves the output as it was."""
    spec = importlib.util.spec_from_file_location("export_shards", JOB)
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("chelsea.png", "rocket.jpg"):
        shutil.copy(site / name, photos / name)
    rows = curated_rows("https://upload.wikimedia.org/wikipedia/commons")[:3]
    curated = write_curated(rows, tmp_path / "curated")
    out = tmp_path / "shards"
    argv = ["--curated", curated, "--output", str(out), "--serve-local", str(photos)]
    argv += ["--processes", "1", "--threads", "4", "--timeout", "5"]
    assert job.main(argv) == 0
    first = (out / "manifest.json").read_text()
    tars = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")}
    assert job.main(argv) == 0
    assert "(0 built this run)" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")} == tars
    assert (out / "manifest.json").read_text() == first
    assert json.loads(first)["total_samples"] == 3


def test_pool_export_carries_every_candidate_of_every_matched_image(site, tmp_path):
    """--pool matched: one sample per image of the run's matches/ with at least one matched
    text, KEY.json listing all of them; unmatched records and texts are left out."""
    with loopback.serve_directory(site, lifetime_s=60) as base:
        rows = [r for r in curated_rows(base) if r["url"].endswith(tuple(GOOD))]
        run_dir = tmp_path / "run"
        write_curated(rows, run_dir / "curated")
        matches = [{**r, "page_url": None} for r in rows]
        matches += [{**rows[0], "page_url": None, "text": "another alt-text", "entry_ids": [7]}]
        matches += [{**rows[1], "page_url": None, "text": "no entry here", "entry_ids": []}]
        matches += [{**rows[2], "page_url": None, "uid": "nomatch", "entry_ids": []}]
        table = pa.Table.from_pylist(
            [{k: m[k] for k in ("uid", "url", "page_url", "text", "lang", "entry_ids")}
             for m in matches],
            schema=pa.schema([("uid", pa.string()), ("url", pa.string()),
                              ("page_url", pa.string()), ("text", pa.string()),
                              ("lang", pa.string()), ("entry_ids", pa.list_(pa.int32()))]),
        )  # fmt: skip
        ds.write_dataset(
            table, run_dir / "matches", format="parquet", partitioning=["lang"],
            partitioning_flavor="hive",
        )  # fmt: skip
        out = tmp_path / "pool"
        manifest, _ = shards.export_shards(
            config_for(str(run_dir / "curated"), out, pool="matched")
        )
    samples = read_tars(out)
    assert set(samples) == {r["uid"] for r in rows}  # "nomatch" has no matched text
    first = json.loads(samples[rows[0]["uid"]]["json"]["candidates"])
    assert [c["text"] for c in first] == sorted([rows[0]["text"], "another alt-text"])
    second = json.loads(samples[rows[1]["uid"]]["json"]["candidates"])
    assert second == [{"text": rows[1]["text"], "lang": rows[1]["lang"],
                       "entry_ids": rows[1]["entry_ids"]}]  # fmt: skip
    assert manifest["source"]["pool"] == "matched"
    assert manifest["source"]["run_dir"] == str(run_dir)
    assert manifest["total_samples"] == len(rows)


def test_a_table_that_is_not_curated_is_refused(tmp_path):
    """Issue 36, case 3: matches/ (every candidate, duplicates per image) and a whole run folder
    used to export as if they were curated/; both are one clear error now."""
    run_dir = tmp_path / "run"
    rows = curated_rows("https://x.org")
    write_curated(rows, run_dir / "curated")
    assert shards.read_curated(str(run_dir / "curated"))[0].num_rows == len(rows)
    with pytest.raises(shards.ExportError, match="a curation run's folder: pass its curated/"):
        shards.read_curated(str(run_dir))
    matches = [{**r, "chosen": True, "page_url": None} for r in rows]
    for r in matches:
        r.pop("keep_prob")
    folder = run_dir / "matches" / "lang=en"
    folder.mkdir(parents=True)
    table = pa.Table.from_pylist([{k: v for k, v in r.items() if k != "lang"} for r in matches])
    pq.write_table(table, folder / "part-00000.parquet")
    (run_dir / "matches" / "_SUCCESS").write_text("")
    with pytest.raises(shards.ExportError, match="is not a curated/ table"):
        shards.read_curated(str(run_dir / "matches"))


def test_killing_the_driver_stops_its_download_workers(site, tmp_path):
    """Issue 36: img2dataset's spawned workers outlived a driver killed with SIGKILL, writing
    shards for ~15 s, into the folder a rerun writes too. They now run in a process group that
    a watcher kills as soon as the driver is gone (curation/shards/supervised.py)."""
    import subprocess
    import sys
    import time

    import psutil

    seen = []
    delays = {f"/{name}": 30.0 for name in GOOD}  # every worker is mid-shard when it happens
    with loopback.serve_directory(site, delays=delays, lifetime_s=90, seen=seen) as base:
        curated = write_curated(curated_rows(base)[: len(GOOD)], tmp_path / "curated")
        argv = [sys.executable, str(JOB), "--curated", curated, "--output", str(tmp_path / "out"),
                "--processes", "2", "--threads", "2", "--samples-per-shard", "2",
                "--timeout", "60", "--allow-local"]  # fmt: skip
        driver = psutil.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        workers = []
        try:
            deadline = time.monotonic() + 60
            while len(seen) < 2 and time.monotonic() < deadline and driver.poll() is None:
                time.sleep(0.1)
            assert len(seen) >= 2, "the workers never started downloading"
            workers = driver.children(recursive=True)
            assert len(workers) >= 3  # the supervised child and its two pool workers
            driver.kill()
            driver.wait(10)
            _, alive = psutil.wait_procs(workers, timeout=5)
            assert not alive, [p.cmdline()[:3] for p in alive]
        finally:
            for process in [driver, *workers]:
                with contextlib.suppress(psutil.Error):
                    process.kill()


def test_export_to_an_object_store_and_the_trainer_reads_it_back(site, s3, tmp_path):
    """`--output s3://...` (img2dataset writes through fsspec's s3fs; endpoint and keys from the
    standard AWS_* variables): the same samples in the same shards as an export of the same
    table to local disk, with sizes.json and manifest.json; a rerun finds every shard complete
    and rebuilds none; the trainer's reader reads the shards from the store."""
    from collections import Counter as Counts

    from trainer import data

    with loopback.serve_directory(site, headers=ROBOTS_HEADERS, lifetime_s=120) as base:
        curated = write_curated(curated_rows(base), tmp_path / "curated")
        out = s3.uri("shards", "run")
        manifest, built = shards.export_shards(config_for(curated, out))
        again, rebuilt = shards.export_shards(config_for(curated, out))
        shards.export_shards(config_for(curated, tmp_path / "local"))
    copy = s3.download("shards", "run", to=tmp_path / "copy")
    local = read_tars(tmp_path / "local")
    assert read_tars(copy) == local and len(local) > 5
    sizes = json.loads((copy / "sizes.json").read_text())
    assert sizes == json.loads((tmp_path / "local" / "sizes.json").read_text())
    assert manifest["total_samples"] == len(local) == again["total_samples"]
    assert built and rebuilt == []
    first = sorted(sizes)[0]
    counters = Counts()
    keys = [s["__key__"] for _, s in data.read_shard(f"{out}/{first}", lambda k: True, counters)]
    assert len(keys) == sizes[first] == counters["read"]
