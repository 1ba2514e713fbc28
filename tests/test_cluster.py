"""The jobs on a real Spark standalone cluster: a master and a worker on 127.0.0.1 started with
pyspark's own `spark-class`, code and dependencies shipped the documented way (the archive of
`make pack-env` as `--archives ...#environment`), outputs compared with a local run."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from tests.conftest import free_port, shared_path
from tests.curation_fixtures import wit_entries, write_metadata

pytestmark = pytest.mark.cluster
ROOT = Path(__file__).resolve().parents[1]

if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
    pytest.skip("no Java: a Spark cluster cannot start here", allow_module_level=True)
pyspark = pytest.importorskip("pyspark")
SPARK_HOME = Path(pyspark.__file__).parent


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYSPARK_")}
    env.update(SPARK_HOME=str(SPARK_HOME), SPARK_LOCAL_IP="127.0.0.1", OMP_NUM_THREADS="1")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def _start(args: list[str], log: Path) -> subprocess.Popen:
    out = log.open("w")
    return subprocess.Popen(
        [str(SPARK_HOME / "bin" / "spark-class"), *args],
        stdout=out, stderr=subprocess.STDOUT, env=_env(), start_new_session=True,
    )  # fmt: skip


def _wait_for(log: Path, pattern: str, process: subprocess.Popen, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if re.search(pattern, log.read_text(errors="replace")):
            return
        if process.poll() is not None:
            break
        time.sleep(0.5)
    raise AssertionError(f"{log.name}: no {pattern!r} in time:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """spark://127.0.0.1:PORT with one 2-core worker; stopped (process groups) afterwards."""
    root = tmp_path_factory.mktemp("cluster")
    port = free_port()
    master_log, worker_log = root / "master.log", root / "worker.log"
    master = _start(
        ["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port),
         "--webui-port", str(free_port())],
        master_log,
    )  # fmt: skip
    processes = [master]
    try:
        _wait_for(master_log, r"I have been elected leader", master)
        url = f"spark://127.0.0.1:{port}"
        worker = _start(
            ["org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1", "--cores", "2",
             "--memory", "6g", "--work-dir", str(root / "work"), "--webui-port",
             str(free_port()), url],
            worker_log,
        )  # fmt: skip
        processes.append(worker)
        _wait_for(worker_log, r"Successfully registered with master", worker)
        yield url
    finally:
        for process in reversed(processes):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def packed_env(tmp_path_factory) -> Path:
    """The archive `make pack-env` writes (same module, same options), in a temp folder."""
    out = tmp_path_factory.mktemp("pack") / "curation-env.tar.gz"
    result = subprocess.run(
        [sys.executable, "-m", "curation.tools.pack_env", "--output", str(out)],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "wrote" in result.stdout and out.is_file()
    return out


def load_job(name: str):
    """jobs/NAME.py as a module, for its `main` in this process."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "jobs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def submit(cluster, archive, job, *args, cwd: Path, python=None, conf=(), kill_worker=False):
    """spark-submit of jobs/JOB; with `kill_worker`, SIGKILL of the first Python worker an
    executor's daemon forks (it is running a task): the CompletedProcess gets `killed`, its
    pid."""
    python = python or "./environment/bin/python"
    cmd = [
        str(SPARK_HOME / "bin" / "spark-submit"), "--master", cluster,
        "--archives", f"{archive}#environment",
        "--conf", f"spark.pyspark.python={python}",
        "--conf", f"spark.pyspark.driver.python={sys.executable}",
        "--conf", "spark.executor.memory=3g", "--conf", "spark.executor.cores=2",
        "--conf", "spark.cores.max=2", *conf,
        str(ROOT / "jobs" / job), *args,
    ]  # fmt: skip
    if not kill_worker:
        return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=_env(), timeout=600)
    out, err = cwd / f"{job}.stdout", cwd / f"{job}.stderr"
    with out.open("w") as stdout, err.open("w") as stderr:
        job_process = subprocess.Popen(cmd, stdout=stdout, stderr=stderr, cwd=cwd, env=_env())
        killed = _kill_first_python_worker(job_process)
        returncode = job_process.wait(600)
    result = subprocess.CompletedProcess(cmd, returncode, out.read_text(), err.read_text())
    result.killed = killed
    return result


def _kill_first_python_worker(job: subprocess.Popen, seconds: float = 300) -> int | None:
    import psutil

    deadline = time.monotonic() + seconds
    while job.poll() is None and time.monotonic() < deadline:
        for process in psutil.process_iter(["cmdline", "ppid"]):
            try:
                forked = "pyspark.daemon" in " ".join(process.info["cmdline"] or [])
                parent = psutil.Process(process.info["ppid"]).cmdline()
            except psutil.Error:
                continue
            if forked and "pyspark.daemon" in " ".join(parent):  # forked by the daemon
                process.kill()
                return process.pid
        time.sleep(0.02)
    return None


def rows(table: Path, sort_by: list[str]) -> list[dict]:
    data = ds.dataset(str(table), format="parquet", partitioning="hive").to_table()
    return sorted(data.to_pylist(), key=lambda r: tuple(str(r[k]) for k in sort_by))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """Real captions: 600 CC3M lines and the WIT captions of two languages, plus metadata."""
    root = tmp_path_factory.mktemp("cluster_inputs")
    lines = shared_path("cc3m_val_10k.tsv").read_text(encoding="utf-8").splitlines()[:600]
    (root / "cc3m.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    entries = {}
    for lang in ("el", "ja"):
        text = shared_path("wit", f"test_{lang}.jsonl").read_text(encoding="utf-8")
        (root / f"wit_{lang}.jsonl").write_text(text, encoding="utf-8")
        captions = [json.loads(x)["caption_reference_description"] for x in text.splitlines()]
        entries[lang] = wit_entries(captions, lang)
    entries["en"] = wit_entries([line.split("\t")[0] for line in lines], "en")
    write_metadata(root / "metadata", entries)
    return root


def test_extract_and_curate_on_the_cluster_equal_a_local_run(
    spark, cluster, packed_env, inputs, monkeypatch, capsys
):
    """Relative paths (as `make` passes them) on both sides: the cluster's driver runs in the
    inputs folder, its executors in their own work directories; the local run is the same jobs'
    `main` in the inputs folder, on the test session (local[2]: no second JVM to start).

    During the cluster's curation an executor's Python worker is killed (SIGKILL) while it runs
    a task of the matches stage: Spark runs the task again, and the tables still equal the
    local run's row for row (a task's files are published whole under names its retry writes
    again: nothing half-written or duplicated survives)."""
    files = ["cc3m.tsv", "wit_el.jsonl", "wit_ja.jsonl"]
    curate_args = ["--metadata", "metadata", "--t-en", "20"]
    monkeypatch.chdir(inputs)
    where = "local"
    assert load_job("extract_alt_text").main(["--input", *files, "--output", where]) == 0
    argv = [*curate_args, "--input", f"{where}/alt_text", "--output", f"{where}/cur"]
    assert load_job("curate").main(argv) == 0, capsys.readouterr().err[-3000:]
    where = "cluster"
    extract = submit(
        cluster, packed_env, "extract_alt_text.py", "--input", *files, "--output", where,
        cwd=inputs,
    )  # fmt: skip
    assert extract.returncode == 0, extract.stderr[-3000:]
    curate = submit(
        cluster, packed_env, "curate.py", *curate_args, "--input", f"{where}/alt_text",
        "--output", f"{where}/cur", cwd=inputs, kill_worker=True,
    )  # fmt: skip
    assert curate.returncode == 0, curate.stderr[-3000:]
    assert curate.killed is not None, "no Python worker was caught running a task"
    # WARN by default under spark-submit: a few lines, not Spark's INFO log (the first 3 lines,
    # Spark's version banner, come before spark.log.level takes effect)
    for result in (extract, curate):
        assert len(result.stderr.splitlines()) < 40, result.stderr[-3000:]
        assert result.stderr.count(" INFO ") <= 3, result.stderr[-3000:]

    alt_local = rows(inputs / "local" / "alt_text", ["uid", "text"])
    assert len(alt_local) > 600
    assert rows(inputs / "cluster" / "alt_text", ["uid", "text"]) == alt_local
    keys = {"matches": ["uid", "text"], "curated": ["uid"], "entry_counts": ["lang", "entry_id"]}
    for table, key in keys.items():
        local = rows(inputs / "local" / "cur" / table, key)
        assert local, table
        assert rows(inputs / "cluster" / "cur" / table, key) == local, table
    assert (inputs / "cluster" / "cur" / "_SUCCESS").exists()
    assert not [p for p in (inputs / "cluster" / "cur").rglob("*") if p.name.endswith(".tmp")]


def test_a_module_missing_on_the_executors_is_one_line(cluster, packed_env, inputs, tmp_path):
    """Executors on the bare interpreter (no pyarrow, no curation): one line that says where."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    captions = (inputs / "cc3m.tsv").read_text(encoding="utf-8").splitlines()[:50]
    table = pa.table(
        {"url": [c.split("\t")[1] for c in captions], "text": [c.split("\t")[0] for c in captions]}
    )
    pq.write_table(table, tmp_path / "captions.parquet")  # no lang: LID runs on the executors
    bare = Path(sys.base_prefix) / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
    result = submit(
        cluster, packed_env, "curate.py", "--metadata", str(inputs / "metadata"),
        "--input", str(tmp_path / "captions.parquet"), "--output", str(tmp_path / "out"),
        cwd=tmp_path, python=str(bare), conf=("--conf", "spark.task.maxFailures=1"),
    )  # fmt: skip
    assert result.returncode != 0
    output = result.stdout + result.stderr  # spark-submit merges the driver's stderr into stdout
    errors = [line for line in output.splitlines() if "error:" in line]
    assert errors == [line for line in output.splitlines() if line.startswith("curate: error:")]
    assert len(errors) == 1, output[-3000:]
    # the bare Python lacks both; which import fails first is the worker's business
    assert re.search(r"on the executors: No module named '(pyarrow|curation)'", errors[0])
    assert "Traceback" not in output
