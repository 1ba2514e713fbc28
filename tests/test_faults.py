"""What crawls and clusters do to the pipeline: killed jobs, corrupt inputs, vanishing shards,
unwritable outputs. Real components throughout (Spark local, the job command lines, the trainer).
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from conftest import PROJECT_ROOT, shared_path

from curation.alt_text.extract import extract_file
from curation.core.tables import code_version
from curation.curate.job import STAGES, CurateConfig, run
from curation.identity import image_uid
from tests.curation_fixtures import caption_rows, wit_entries, write_metadata
from tests.test_curate import reference_run

PY = sys.executable


def load_job(name: str):
    spec = importlib.util.spec_from_file_location(name, PROJECT_ROOT / "jobs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------- killed curation


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory, wit_captions):
    """Real captions (CC3M en, WIT da and ja) in four Parquet files, and caption n-gram metadata."""
    root = tmp_path_factory.mktemp("faults_curate")
    rows = caption_rows(1500, ("da", "ja"))
    table = pa.table(
        {
            "uid": [image_uid(url, page) for url, page, _, _ in rows],
            "url": [r[0] for r in rows],
            "page_url": pa.array([r[1] for r in rows], pa.string()),
            "text": [r[2] for r in rows],
            "lang": [r[3] for r in rows],
        }
    )
    (root / "alt_text").mkdir()
    for part in range(4):
        pq.write_table(table.take(list(range(part, len(table), 4))), root / "alt_text" / f"p{part}")
    en = [r[2] for r in rows if r[3] == "en"]
    entries = write_metadata(
        root / "metadata",
        {"en": wit_entries(en, "en"), **{k: wit_entries(wit_captions[k], k) for k in ("da", "ja")}},
    )
    return root, table, entries


def curate_config(root: Path, output: Path, **extra) -> CurateConfig:
    return CurateConfig(
        metadata=str(root / "metadata"),
        input=str(root / "alt_text"),
        output=str(output),
        t_en=5,
        seed=3,
        **extra,
    )


def table_rows(path: Path) -> list[tuple]:
    table = ds.dataset(path, format="parquet", partitioning="hive").to_table()
    rows = []
    for row in table.to_pylist():
        rows.append(
            tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in sorted(row.items()))
        )
    return sorted(rows)


def kill_curate_during(stage: str, root: Path, output: Path) -> str:
    """Run jobs/curate.py, SIGKILL its whole process group once `stage` has started; its log."""
    cmd = [
        PY, "jobs/curate.py",
        "--metadata", str(root / "metadata"),
        "--input", str(root / "alt_text"),
        "--output", str(output),
        "--t-en", "5", "--seed", "3",
        "--master", "local[2]", "--partitions", "2",
    ]  # fmt: skip
    process = subprocess.Popen(
        cmd,
        cwd=PROJECT_ROOT,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        start_new_session=True,  # its own process group: the JVM and Python workers with it
    )
    log, started = [], threading.Event()

    def read():
        for line in process.stderr:
            log.append(line)
            if f"stage {stage}: started" in line:
                started.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert started.wait(240), "".join(log)[-3000:]
        deadline = time.monotonic() + 10  # let the stage's tasks begin writing
        while not (output / stage).exists() and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # every process of the group is gone
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        pytest.fail("processes of the killed job survived SIGKILL of its group")
    reader.join(10)
    return "".join(log)


def test_curation_killed_mid_stage_then_rerun_loses_and_duplicates_nothing(
    spark, small_corpus, tmp_path
):
    root, table, entries = small_corpus
    killed = tmp_path / "killed"
    version = code_version()
    log = kill_curate_during("entry_counts", root, killed)
    assert "stage matches: done" in log
    assert not (killed / "_SUCCESS").exists() and not (killed / "run.json").exists()
    assert not (killed / "curated").exists()
    shutil.copytree(killed, tmp_path / "killed_copy")

    resumed = run(curate_config(root, killed, resume=True), spark)
    if code_version() == version:  # a code edit in between (shared tree) invalidates all stages
        assert resumed.stages["matches"] == "skipped"  # finished before the kill
    assert isinstance(resumed.stages["entry_counts"], float)  # interrupted: rebuilt
    rerun = run(curate_config(root, tmp_path / "killed_copy"), spark)
    assert all(isinstance(rerun.stages[s], float) for s in STAGES)
    assert resumed.counts == rerun.counts
    for name in STAGES:
        assert table_rows(killed / name) == table_rows(tmp_path / "killed_copy" / name), name

    # both equal an uninterrupted run: the single-process reference of test_curate
    counts, t, _, decisions = reference_run(table, entries, 5, 3)
    distinct = len(set(zip(table.column("uid").to_pylist(), table.column("text").to_pylist())))
    matches = ds.dataset(killed / "matches", partitioning="hive").to_table(["uid", "text"])
    assert len(set(zip(*matches.to_pydict().values()))) == matches.num_rows == distinct
    got_counts = ds.dataset(killed / "entry_counts", partitioning="hive").to_table()
    for lang, expected in counts.items():
        rows = got_counts.filter(pc.equal(got_counts["lang"], lang)).sort_by("entry_id")
        assert rows.column("count").to_pylist() == expected.tolist(), lang
    thresholds = pq.read_table(killed / "thresholds").to_pylist()
    assert {r["lang"]: r["t"] for r in thresholds} == t
    curated = ds.dataset(killed / "curated", partitioning="hive").to_table().to_pylist()
    assert sorted((r["uid"], r["text"], tuple(r["entry_ids"])) for r in curated) == sorted(
        (d.record.uid, d.record.text, d.record.entry_ids) for d in decisions if d.kept
    )
    assert len({r["uid"] for r in curated}) == len(curated) > 0
    for out in (killed, tmp_path / "killed_copy"):
        assert (out / "_SUCCESS").exists()
        assert json.loads((out / "run.json").read_text())["counts"] == resumed.counts


# --------------------------------------------------------------------------- corrupt alt-text input


def test_wholly_corrupt_files_among_many_are_counted_and_the_rest_extracted(spark, tmp_path):
    """Whole files that are not what their name says (test_extract_job covers bad members
    inside one WARC): random bytes as a WARC, a .jsonl.gz that is not gzip, a cut .tsv.gz."""
    good = [str(shared_path("whirlwind.warc.gz"))]
    good += [str(shared_path("wit", f"test_{lang}.jsonl")) for lang in ("da", "el", "ko")]
    lines = shared_path("cc3m_val_10k.tsv").read_text(encoding="utf-8").splitlines()
    (tmp_path / "cc3m_a.tsv").write_text("\n".join(lines[:300]) + "\n", encoding="utf-8")
    (tmp_path / "cc3m_b.tsv.gz").write_bytes(gzip.compress(("\n".join(lines[300:600])).encode()))
    good += [str(tmp_path / "cc3m_a.tsv"), str(tmp_path / "cc3m_b.tsv.gz")]
    random_bytes = bytes((i * 7919 + 13) % 251 for i in range(20_000))
    (tmp_path / "noise.warc.gz").write_bytes(random_bytes)
    (tmp_path / "fake.jsonl.gz").write_bytes(b"\x1f\x8b\x08" + random_bytes)
    cut = gzip.compress(("\n".join(lines[600:900])).encode())
    (tmp_path / "cut.tsv.gz").write_bytes(cut[: len(cut) // 2])
    corrupt = [str(tmp_path / n) for n in ("noise.warc.gz", "fake.jsonl.gz", "cut.tsv.gz")]

    out = tmp_path / "out"
    inputs = [*good[:3], *corrupt, *good[3:]]
    assert load_job("extract_alt_text").main(["--input", *inputs, "--output", str(out)]) == 0

    table = ds.dataset(out / "alt_text", format="parquet", partitioning="hive").to_table()
    got = Counter(Path(source).name for source in table.column("source_file").to_pylist())
    job_drops = Counter()
    for row in pq.read_table(out / "drops").to_pylist():
        if row["reason"] != "duplicate":
            job_drops[(Path(row["source_file"]).name, row["reason"])] += row["count"]
    expected, file_drops = set(), Counter()
    for path in inputs:  # the library reading each file alone is the reference
        fmt = "warc" if path.endswith(".warc.gz") else "jsonl" if ".jsonl" in path else "tsv"
        drops = Counter()
        records = {(r.url, r.text) for r in extract_file(path, fmt, drops)}
        expected |= records
        file_drops.update({(Path(path).name, k): v for k, v in drops.items()})
        if path in good:
            assert got[Path(path).name] >= len(records) * 0.95 > 0, path  # all but duplicates
    assert set(zip(table.column("url").to_pylist(), table.column("text").to_pylist())) == expected
    assert job_drops == file_drops
    assert job_drops[("noise.warc.gz", "broken_warc_header")] >= 1
    assert job_drops[("fake.jsonl.gz", "unreadable_file")] == 1
    assert job_drops[("cut.tsv.gz", "unreadable_file")] == 1


def test_corrupt_parquet_among_many_is_a_counted_drop(spark, tmp_path):
    good = [str(shared_path("wit", f"test_{lang}.jsonl")) for lang in ("da", "el")]
    pq.write_table(
        pa.table({"caption": ["a red bicycle"], "url": ["http://example.org/b.jpg"]}),
        tmp_path / "ok.parquet",
    )
    (tmp_path / "broken.parquet").write_bytes(b"PAR1" + b"\x00" * 5000)
    inputs = [*good, str(tmp_path / "ok.parquet"), str(tmp_path / "broken.parquet")]
    out = tmp_path / "out"
    assert load_job("extract_alt_text").main(["--input", *inputs, "--output", str(out)]) == 0
    drops = {
        (Path(r["source_file"]).name, r["reason"]): r["count"]
        for r in pq.read_table(out / "drops").to_pylist()
    }
    assert drops[("broken.parquet", "unreadable_file")] == 1


# --------------------------------------------------------------------------- vanishing shard


def test_shard_deleted_mid_epoch_is_skipped_with_a_warning(tmp_path):
    pytest.importorskip("open_clip")
    pytest.importorskip("skimage")
    import psutil
    from trainer_shards import make_shards

    shards = tmp_path / "shards"
    make_shards(shards, num_shards=6, per_shard=24)  # 144 samples: 18 batches of 8 per epoch
    out = tmp_path / "run"
    cmd = [
        PY, str(PROJECT_ROOT / "trainer" / "train.py"),
        "--train-data", str(shards), "--model", "tiny-clip",
        "--batch-size", "8", "--steps", "16", "--warmup", "1", "--lr", "1e-3",
        "--precision", "fp32", "--workers", "0", "--shuffle-buffer", "8",
        "--log-every", "1", "--save-every", "1000", "--output-dir", str(out),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    stderr = []
    threading.Thread(target=lambda: stderr.extend(process.stderr), daemon=True).start()
    deleted = []
    try:
        for line in process.stdout:
            if "samples/s" in line:  # the first step's progress line: pause and delete
                break
        trainer = psutil.Process(process.pid)
        for _ in range(200):
            process.send_signal(signal.SIGSTOP)
            open_tars = {Path(f.path).name for f in trainer.open_files() if f.path.endswith(".tar")}
            if open_tars:
                for tar in sorted(shards.glob("*.tar")):
                    if tar.name not in open_tars:
                        tar.unlink()
                        deleted.append(tar.name)
                break
            process.send_signal(signal.SIGCONT)  # between two shards: let it open the next
            time.sleep(0.01)
    finally:
        process.send_signal(signal.SIGCONT)
    stdout = process.stdout.read()
    assert process.wait(240) == 0, "".join(stderr)[-3000:]
    assert len(deleted) == 5, "the trainer was not caught inside a shard"
    warnings = [line for line in stderr if line.startswith("warning: skipping unreadable shard")]
    assert warnings and any(name in w for w in warnings for name in deleted)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 16 and summary["dropped"]["bad_shard"] >= 1
    assert summary["shard_io"]["read"] >= 16 * 4  # a deleted local file is not read again
    assert "shard_retries" not in summary["shard_io"]
    assert "done:" in stdout
    losses = [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 16


# --------------------------------------------------------------------------- unwritable output


def error_lines(stderr: str, prefix: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith(prefix)]


@pytest.fixture
def blocked(tmp_path) -> Path:
    """An output path whose parent is a file (we run as root: permission bits do not stop us)."""
    (tmp_path / "a_file").write_text("not a folder")
    return tmp_path / "a_file" / "out"


def check_one_clear_line(rc: int, stderr: str, prefix: str, output: Path) -> None:
    assert rc != 0
    assert "Traceback" not in stderr, stderr[-2000:]
    lines = error_lines(stderr, prefix)
    assert len(lines) == 1, stderr[-2000:]
    assert str(output.parent) in lines[0] and "not a dir" in lines[0].lower(), lines[0]


def test_unwritable_output_curate(spark, small_corpus, blocked, capsys):
    root, _, _ = small_corpus
    argv = ["--metadata", str(root / "metadata"), "--input", str(root / "alt_text")]
    rc = load_job("curate").main([*argv, "--output", str(blocked)])
    check_one_clear_line(rc, capsys.readouterr().err, "curate: error:", blocked)


@pytest.fixture
def full_disk(tmp_path):
    """A 256 KiB tmpfs: room for the job's markers, not for its tables."""
    mount = tmp_path / "small_disk"
    mount.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True
    )
    if made.returncode != 0:
        pytest.skip("mounting a small tmpfs needs root")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_full_mid_stage_is_one_line_and_leaves_nothing_that_looks_complete(
    spark, small_corpus, full_disk, capsys
):
    root, _, _ = small_corpus
    out = full_disk / "run"
    out.mkdir()
    (out / "_SUCCESS").write_text("")  # a previous run's markers: must not survive a failure
    (out / "run.json").write_text("{}")
    argv = ["--metadata", str(root / "metadata"), "--input", str(root / "alt_text")]
    rc = load_job("curate").main([*argv, "--output", str(out), "--t-en", "50"])
    stderr = capsys.readouterr().err
    assert rc == 1
    lines = error_lines(stderr, "curate: error:")
    assert len(lines) == 1 and "No space left on device" in lines[0], stderr[-2000:]
    assert not lines[0].startswith("curate: error: Caused by")
    assert not (out / "_SUCCESS").exists() and not (out / "run.json").exists()
    assert not any((out / stage / "_SUCCESS").exists() for stage in ("curated", "thresholds"))


def test_unwritable_output_build_metadata(spark, blocked, capsys):
    previous = spark.conf.get("spark.sql.shuffle.partitions")
    wordnet = str(PROJECT_ROOT / "curation" / "sample_data" / "wordnet")
    argv = ["--wordnet", wordnet, "--languages", "en", "--no-wordfreq", "--output", str(blocked)]
    try:
        rc = load_job("build_metadata").main(argv)
    finally:
        spark.conf.set("spark.sql.shuffle.partitions", previous)
    check_one_clear_line(rc, capsys.readouterr().err, "build_metadata: error:", blocked)


def test_unwritable_output_extract_alt_text(spark, blocked, capsys):
    argv = ["--input", str(shared_path("wit", "test_el.jsonl")), "--output", str(blocked)]
    rc = load_job("extract_alt_text").main(argv)
    check_one_clear_line(rc, capsys.readouterr().err, "extract_alt_text: error:", blocked)


def test_unwritable_output_export_shards(tmp_path, blocked):
    from tests.test_shards import curated_rows, write_curated

    curated = write_curated(curated_rows("https://images.example.org"), tmp_path / "curated")
    cmd = [PY, str(PROJECT_ROOT / "jobs" / "export_shards.py"), "--curated", curated]
    result = subprocess.run(
        [*cmd, "--output", str(blocked)], capture_output=True, text=True, timeout=300
    )
    check_one_clear_line(result.returncode, result.stderr, "export_shards: error:", blocked)


def test_unwritable_output_trainer(tmp_path, blocked):
    pytest.importorskip("open_clip")
    pytest.importorskip("skimage")
    from trainer_shards import make_shards

    make_shards(tmp_path / "shards", num_shards=1, per_shard=8)
    cmd = [PY, str(PROJECT_ROOT / "trainer" / "train.py"), "--train-data", str(tmp_path / "shards")]
    result = subprocess.run(
        [
            *cmd,
            "--model",
            "tiny-clip",
            "--steps",
            "1",
            "--workers",
            "0",
            "--output-dir",
            str(blocked),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    check_one_clear_line(result.returncode, result.stderr, "error:", blocked)
