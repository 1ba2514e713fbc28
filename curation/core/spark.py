"""Spark session helpers shared by the jobs and the tests."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sys
from pathlib import Path

LOCAL_JAVA_OPTIONS = "-XX:+UseParallelGC"


def get_spark(
    app_name: str,
    master: str | None = None,
    conf: dict[str, str] | None = None,
    local_conf: dict[str, str] | None = None,
    local_java_options: str = LOCAL_JAVA_OPTIONS,
):
    """The active session under spark-submit; a local one (all cores) under plain python.

    Executors must run the same Python as the driver, or they will not find pyarrow: unless the
    user set PYSPARK_PYTHON, point it at this interpreter. `local_conf` and
    `local_java_options` apply to local sessions only (unless the user passes JVM options).
    """
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName(app_name)
    if master is None and "SPARK_HOME" not in os.environ and not _launched_by_spark_submit():
        master = "local[*]"
    if master:
        builder = builder.master(master)
    settings = {
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.session.timeZone": "UTC",
        "spark.ui.showConsoleProgress": "false",  # the jobs log their own stage progress
    }
    local = bool(master and master.startswith("local"))
    if local and not _java_options_given():
        # A local run is one batch JVM: the throughput collector beats G1 (the JVM's default on
        # 2+ CPUs, tuned for pause times) by ~5% of wall time on the curation job. The class
        # archive (`archive_java_options`, built by curation/tools/spark_archive.py) halves its
        # start-up.
        settings["spark.driver.extraJavaOptions"] = local_java_options + archive_java_options()
    if local and not _conf_given("spark.python.daemon.module") and _workers_find_this_package():
        # the workers import pyspark with its bytecode cache (core/pyspark_daemon.py)
        settings["spark.python.daemon.module"] = "curation.core.pyspark_daemon"
    settings.update(conf or {})
    if local:
        settings.update(local_conf or {})
    quiet = (
        not _conf_given("spark.log.level")
        and "spark.log.level" not in settings
        and os.environ.get("CURATION_SPARK_LOG_LEVEL", "WARN").upper() in ("WARN", "ERROR")
    )
    if quiet:
        settings.update(spark_log_level_conf())
    for key, value in settings.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    if quiet:
        _quiet_task_failures(session)
    return session


def _workers_find_this_package() -> bool:
    """Whether the Python workers run this interpreter, which has this package installed: only
    then can Spark start them with core/pyspark_daemon.py (else a daemon that cannot be found
    would fail the session with an EOF instead of the job's one-line error)."""
    from importlib import metadata

    worker = os.environ.get("PYSPARK_PYTHON", sys.executable)
    worker = shutil.which(worker) or worker
    if os.path.realpath(worker) != os.path.realpath(sys.executable):
        return False
    try:
        metadata.distribution("metaclip-pipeline")
    except metadata.PackageNotFoundError:
        return False
    return True


# --- the class-data-sharing archive of local sessions ----------------------------------------
# A local Spark session loads and verifies some 15 thousand classes before its first job; with
# this archive (built once per venv by `make`, curation/tools/spark_archive.py) the JVM maps
# them instead, halving its start-up. CURATION_SPARK_CDS=0 turns it off, =require makes a
# session fail if it cannot be mapped (tests); CURATION_SPARK_CDS_DIR moves it.


def _java() -> Path | None:
    """The java binary spark-submit runs: JAVA_HOME's, else the first on PATH."""
    home = os.environ.get("JAVA_HOME")
    found = Path(home) / "bin" / "java" if home else shutil.which("java")
    return Path(found).resolve() if found and Path(found).exists() else None


def archive_path() -> Path | None:
    """Where the archive for this JDK and these Spark jars lives (whether or not it exists)."""
    from pyspark.find_spark_home import _find_spark_home

    java = _java()
    jars = Path(_find_spark_home()) / "jars"
    if java is None or not jars.is_dir():
        return None
    digest = hashlib.sha256()
    for path in [java, *sorted(jars.glob("*.jar"))]:
        stat = path.stat()
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    folder = (
        os.environ.get("CURATION_SPARK_CDS_DIR") or Path(sys.prefix) / "share" / "metaclip-pipeline"
    )
    return Path(folder) / f"spark-cds-{digest.hexdigest()[:16]}.jsa"


def archive_java_options() -> str:
    """JVM options for a local session: the archive when there is one (and it is not off)."""
    mode = os.environ.get("CURATION_SPARK_CDS", "1").lower()
    if mode in ("0", "off", "false"):
        return ""
    path = archive_path()
    if path is None or not path.is_file():
        if mode == "require":
            raise RuntimeError(f"CURATION_SPARK_CDS=require but no class archive at {path}")
        return ""
    return f" -XX:SharedArchiveFile={path}" + (" -Xshare:on" if mode == "require" else "")


def _quiet_task_failures(session) -> None:
    """A failed task is retried, then the job fails and says why in one line: without this, each
    attempt's WARN 'Lost task' (and, in local mode, the executor's ERROR; in a write, the
    writer's ERROR; for a cached result, the block manager's WARN) would print the Python
    worker's whole traceback first.
    CURATION_SPARK_LOG_LEVEL=INFO brings them back."""
    try:
        jvm = session.sparkContext._jvm
        level = jvm.org.apache.logging.log4j.Level
        configurator = jvm.org.apache.logging.log4j.core.config.Configurator
        configurator.setLevel("org.apache.spark.scheduler.TaskSetManager", level.ERROR)
        configurator.setLevel("org.apache.spark.executor.Executor", level.FATAL)
        # a task failing while its output is cached (persist): "Putting block ... failed"
        configurator.setLevel("org.apache.spark.storage.BlockManager", level.ERROR)
        # a task failing inside a write: "Aborting job" with the same traceback
        configurator.setLevel(
            "org.apache.spark.sql.execution.datasources.FileFormatWriter", level.FATAL
        )
    except Exception:  # noqa: BLE001 - another logging backend: keep Spark's default
        pass


# --- the Python workers' allocators --------------------------------------------------------
# A curation task allocates and frees hundreds of MB of Arrow and numpy buffers. By default both
# allocators hand freed pages back to the kernel at once (Arrow's mimalloc purges them, glibc
# unmaps every block above its mmap threshold), so the next task faults every page in again:
# ~5 of a 3M-record run's 35 CPU-s were system time, nearly all page faults. These settings keep
# freed memory in the worker for its next allocation: a worker's RSS stays at its largest task's
# peak instead of falling between tasks (docs/benchmarks.md, curation section).
KEEP_FREED_MEMORY = {
    "ARROW_DEFAULT_MEMORY_POOL": "jemalloc",  # read once, when pyarrow's default pool is made
    "JE_ARROW_MALLOC_CONF": "dirty_decay_ms:-1,muzzy_decay_ms:-1",  # never purge freed pages
    "MALLOC_TRIM_THRESHOLD_": str(2**30),  # glibc (numpy): keep up to 1 GiB free at the top
    "MALLOC_TOP_PAD_": str(64 * 2**20),
    "MALLOC_MMAP_THRESHOLD_": str(32 * 2**20),  # its largest: smaller blocks come from the heap
}


def _has_jemalloc() -> bool:
    import pyarrow as pa

    try:
        pa.jemalloc_memory_pool()
    except NotImplementedError:  # a pyarrow built without it (Windows wheels)
        return False
    return True


@contextlib.contextmanager
def python_worker_env(spark, env: dict[str, str]):
    """Environment variables for the Python workers of the Spark jobs planned inside the block.

    PySpark sends `SparkContext.environment` with every Python function and starts a worker
    daemon per distinct environment, so this works under spark-submit and on a cluster as well
    as locally. A variable the user set (`spark.executorEnv.NAME`, or in the environment of a
    local run) wins; the previous environment is back after the block."""
    environment = spark.sparkContext.environment
    local = spark.sparkContext.master.startswith("local")
    added = {
        name: value
        for name, value in env.items()
        if name not in environment and not (local and name in os.environ)
    }
    if added.get("ARROW_DEFAULT_MEMORY_POOL") == "jemalloc" and not _has_jemalloc():
        del added["ARROW_DEFAULT_MEMORY_POOL"]  # Arrow would warn in every worker
    environment.update(added)
    try:
        yield
    finally:
        for name in added:
            environment.pop(name, None)


def _conf_given(key: str) -> bool:
    """Whether the user already set this conf key: spark-submit's --conf are system properties
    of the JVM that launched us (its gateway is already up), plain runs use PYSPARK_SUBMIT_ARGS."""
    if "PYSPARK_GATEWAY_PORT" in os.environ:
        from pyspark import SparkContext

        SparkContext._ensure_initialized()  # connects to spark-submit's gateway, launches nothing
        return SparkContext._jvm.java.lang.System.getProperty(key) is not None
    return key in os.environ.get("PYSPARK_SUBMIT_ARGS", "")


def size_shuffle_partitions(spark, input_bytes: int, per_partition: int = 128 << 20) -> int:
    """spark.sql.shuffle.partitions for this input, unless the user set it: on a laptop 4 per
    core; on a cluster one per 128 MiB of input and at least 2 per core (Spark's default of 200
    turns a small job into stages of hundreds of near-empty tasks). Returns the value in force."""
    context = spark.sparkContext
    if context.getConf().contains("spark.sql.shuffle.partitions"):
        return int(spark.conf.get("spark.sql.shuffle.partitions"))
    cores = context.defaultParallelism
    if context.master.startswith("local"):
        n = 4 * cores
    else:
        n = max(2 * cores, -(-input_bytes // per_partition))
    spark.conf.set("spark.sql.shuffle.partitions", str(n))
    return n


def _java_options_given() -> bool:
    """True when the user already passes JVM options we must not fight (two GCs abort the JVM)."""
    submit_args = os.environ.get("PYSPARK_SUBMIT_ARGS", "")
    tool_options = os.environ.get("JAVA_TOOL_OPTIONS", "") + os.environ.get("JDK_JAVA_OPTIONS", "")
    return (
        "java-options" in submit_args or "extraJavaOptions" in submit_args or "GC" in tool_options
    )


def _launched_by_spark_submit() -> bool:
    return "PYSPARK_GATEWAY_PORT" in os.environ or "SPARK_SUBMIT_OPTS" in os.environ


def local_test_conf(shuffle_partitions: int = 4) -> dict[str, str]:
    """Small, quiet settings for local[2] tests and the demo."""
    return {
        "spark.sql.shuffle.partitions": str(shuffle_partitions),
        "spark.default.parallelism": str(shuffle_partitions),
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.driver.memory": "2g",
        "spark.sql.adaptive.enabled": "false",
        "spark.python.worker.reuse": "true",
    }


def spark_log_level_conf() -> dict[str, str]:
    """WARN by default (spark-submit's INFO is hundreds of lines); CURATION_SPARK_LOG_LEVEL or
    `--conf spark.log.level=...` overrides it."""
    return {"spark.log.level": os.environ.get("CURATION_SPARK_LOG_LEVEL", "WARN")}


# the Hadoop connector Spark needs for a scheme it cannot read by itself
CONNECTORS = {
    "s3": "the hadoop-aws jar (--packages org.apache.hadoop:hadoop-aws:<the Hadoop version "
    "of $SPARK_HOME/jars>) and name the input s3a://",
    "s3a": "the hadoop-aws jar (--packages org.apache.hadoop:hadoop-aws:<the Hadoop version "
    "of $SPARK_HOME/jars>)",
    "gs": "Google's GCS connector jar (--jars gcs-connector-hadoop3-<version>-shaded.jar)",
    "abfs": "the hadoop-azure jar (--packages org.apache.hadoop:hadoop-azure:<version>)",
    "abfss": "the hadoop-azure jar (--packages org.apache.hadoop:hadoop-azure:<version>)",
}


class MissingConnector(OSError):
    """Spark's Hadoop layer has no filesystem for the URI's scheme: says which jar to add."""

    def __init__(self, uri: str):
        scheme = uri.split("://", 1)[0].lower()
        fix = CONNECTORS.get(scheme, f"a Hadoop connector for {scheme}://")
        super().__init__(f"Spark has no filesystem for {scheme}:// ({uri}): add {fix}")

    @staticmethod
    def caused(error: BaseException) -> bool:
        """Whether a (py4j-wrapped) error is Hadoop's UnsupportedFileSystemException."""
        return "No FileSystem for scheme" in str(error)


class HadoopFS:
    """Small file operations on any URI Spark can write (local, hdfs, s3a, ...), from the driver."""

    def __init__(self, spark):
        self._jvm = spark.sparkContext._jvm
        self._conf = spark.sparkContext._jsc.hadoopConfiguration()

    def _path(self, uri: str):
        path = self._jvm.org.apache.hadoop.fs.Path(uri)
        try:
            return path, path.getFileSystem(self._conf)
        except Exception as error:  # noqa: BLE001 - py4j wraps UnsupportedFileSystemException
            if not MissingConnector.caused(error):
                raise
            raise MissingConnector(uri) from None

    def exists(self, uri: str) -> bool:
        path, fs = self._path(uri)
        return fs.exists(path)

    def check_writable(self, uri: str) -> None:
        """Raise OSError (one line) unless a file can be created under `uri`: fail before work."""
        probe = f"{uri.rstrip('/')}/_write_probe"
        try:
            self.write_text(probe, "")
            self.delete(probe)
        except Exception as error:  # noqa: BLE001 - py4j wraps the Java IOException
            lines = [line.strip() for line in str(error).splitlines() if line.strip()]
            reason = next(
                (line for line in lines if "Exception" in line), lines[0] if lines else ""
            )
            raise OSError(f"cannot write to output {uri}: {reason.lstrip(': ')}") from None

    def is_dir(self, uri: str) -> bool:
        path, fs = self._path(uri)
        return fs.exists(path) and fs.getFileStatus(path).isDirectory()

    def delete(self, uri: str) -> None:
        path, fs = self._path(uri)
        if fs.exists(path):
            fs.delete(path, True)

    def write_text(self, uri: str, text: str) -> None:
        """Write via a temporary file and a rename, so readers never see half a file."""
        path, fs = self._path(uri)
        fs.setWriteChecksum(False)  # no .crc side files next to run.json / _SUCCESS
        tmp = self._jvm.org.apache.hadoop.fs.Path(uri + ".tmp")
        stream = fs.create(tmp, True)
        stream.write(bytearray(text.encode("utf-8")))
        stream.close()
        if fs.exists(path):
            fs.delete(path, False)
        if not fs.rename(tmp, path):
            raise OSError(f"could not write {uri}")

    def glob_bytes(self, pattern: str) -> int:
        """Total size of the files a glob URI matches (0 when none)."""
        path, fs = self._path(pattern)
        statuses = fs.globStatus(path) or []
        return sum(fs.getContentSummary(st.getPath()).getLength() for st in statuses)

    def content_summary(self, uri: str) -> list[int]:
        """[bytes, files, directories, newest modification time] under a URI: input identity."""
        path, fs = self._path(uri)
        if not fs.exists(path):
            raise FileNotFoundError(uri)
        summary = fs.getContentSummary(path)
        newest = 0
        files = fs.listFiles(path, True)
        while files.hasNext():
            newest = max(newest, files.next().getModificationTime())
        return [summary.getLength(), summary.getFileCount(), summary.getDirectoryCount(), newest]
