"""A class-data-sharing (AppCDS) archive of Spark's classes, for local runs.

A local Spark session loads and verifies some 15 thousand classes before its first job: about
7 of the 14 CPU-seconds a local `jobs/curate.py` run spends in the JVM. With this archive the
JVM maps them instead (docs/benchmarks.md). `make` builds it once per virtual environment
(`python -m curation.tools.spark_archive`, ~40 s): a short representative run whose JVM writes
the classes it loaded at exit (JDK 17's -XX:ArchiveClassesAtExit). `get_spark`
(curation/core/spark.py, `archive_java_options`) passes it to local sessions
when one exists for this JDK and these Spark jars; clusters (long-lived executors) are
untouched. CURATION_SPARK_CDS=0 turns it off, =require makes a session fail if the archive
cannot be mapped (tests); CURATION_SPARK_CDS_DIR moves it (default: <sys.prefix>/share/
metaclip-pipeline, ~160 MB).
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from curation.core.spark import LOCAL_JAVA_OPTIONS, archive_path, get_spark
from curation.curate.job import CurateConfig, run

log = logging.getLogger("spark_archive")


def build(force: bool = False) -> Path | None:
    """Write the archive unless it exists; returns its path (None when this JDK cannot)."""
    path = archive_path()
    if path is None:
        log.warning("spark class archive: no java or Spark jars found, not built")
        return None
    if path.is_file() and not force:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    started = time.perf_counter()
    env = {**os.environ, "CURATION_SPARK_CDS": "0"}
    command = [sys.executable, "-m", "curation.tools.spark_archive", "--dump-to", str(partial)]
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0 or not partial.is_file():
        partial.unlink(missing_ok=True)
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise RuntimeError("spark class archive not written: " + " | ".join(tail))
    os.replace(partial, path)
    for old in path.parent.glob("spark-cds-*.jsa"):  # archives of other JDKs or Spark versions
        if old != path:
            old.unlink(missing_ok=True)
    log.info("spark class archive: %s in %.0f s", path, time.perf_counter() - started)
    return path


def _dump(target: str) -> None:
    """The representative run: a small curation (the curation job with its Python tasks)
    and the Spark SQL the other jobs use; the JVM writes the archive as it exits."""
    options = f"{LOCAL_JAVA_OPTIONS} -XX:TieredStopAtLevel=1 -XX:ArchiveClassesAtExit={target}"
    spark = get_spark("spark-cds", "local[1]", local_java_options=options)
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        for lang, entries in (("en", ["cat", "red cat"]), ("ja", ["猫"])):
            folder = root / "metadata" / f"lang={lang}"
            folder.mkdir(parents=True)
            ids = pa.array(range(len(entries)), pa.int32())
            pq.write_table(pa.table({"entry_id": ids, "entry": entries}), folder / "part.parquet")
        texts = [("a red cat", "en"), ("a cat", "en"), ("猫です", "ja"), ("x", "zz")] * 25
        records = pa.table(
            {
                "uid": [f"u{i % 60}" for i in range(len(texts))],
                "url": [f"https://example.org/{i % 60}.jpg" for i in range(len(texts))],
                "text": [t for t, _ in texts],
                "lang": [lang for _, lang in texts],
            }
        )
        pq.write_table(records, root / "alt_text.parquet")
        config = CurateConfig(
            metadata=str(root / "metadata"),
            input=str(root / "alt_text.parquet"),
            output=str(root / "out"),
            t_en=1,
        )
        run(config, spark)
        frame = spark.range(1000).selectExpr("id % 7 AS k", "cast(id AS string) AS v")
        frame.groupBy("k").count().write.partitionBy("k").parquet(str(root / "sql"))
        spark.read.parquet(str(root / "sql")).join(frame, "k").orderBy("v").limit(3).collect()
    gateway = spark.sparkContext._gateway
    spark.stop()
    process = getattr(gateway, "proc", None)
    gateway.shutdown()
    if process is not None:  # the JVM exits on EOF and writes the archive as it does
        process.stdin.close()
        process.wait(timeout=600)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="rebuild even if it exists")
    parser.add_argument("--dump-to", help=argparse.SUPPRESS)  # the child run of build()
    args = parser.parse_args(argv)
    if args.dump_to:
        _dump(args.dump_to)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        path = build(force=args.force)
    except (RuntimeError, OSError) as error:
        print(f"spark class archive: not built ({error}); local runs start slower", file=sys.stderr)
        return 1
    print(f"spark class archive: {path}" if path else "spark class archive: not available")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
