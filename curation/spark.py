"""Spark session helpers shared by the jobs and the tests."""

from __future__ import annotations

import os
import re
import sys

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
        # archive (curation/spark_cds.py) halves its start-up.
        from curation import spark_cds

        settings["spark.driver.extraJavaOptions"] = local_java_options + spark_cds.java_options()
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


def _quiet_task_failures(session) -> None:
    """A failed task is retried, then the job fails and says why in one line: without this, each
    attempt's WARN 'Lost task' (and, in local mode, the executor's ERROR; in a write, the
    writer's ERROR) would print the Python worker's whole traceback first.
    CURATION_SPARK_LOG_LEVEL=INFO brings them back."""
    try:
        jvm = session.sparkContext._jvm
        level = jvm.org.apache.logging.log4j.Level
        configurator = jvm.org.apache.logging.log4j.core.config.Configurator
        configurator.setLevel("org.apache.spark.scheduler.TaskSetManager", level.ERROR)
        configurator.setLevel("org.apache.spark.executor.Executor", level.FATAL)
        # a task failing inside a write: "Aborting job" with the same traceback
        configurator.setLevel(
            "org.apache.spark.sql.execution.datasources.FileFormatWriter", level.FATAL
        )
    except Exception:  # noqa: BLE001 - another logging backend: keep Spark's default
        pass


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


_MISSING_MODULE = re.compile(r"No module named '([^']+)'")


def error_line(error: BaseException) -> str:
    """One line that says what went wrong, also when a Spark task failed on an executor (the
    Python worker's traceback ends with "SomeError: message"; Spark's own wrapping adds
    'Caused by:' lines). A module missing on the executors says so: the driver has it."""
    text = str(error)
    missing = _MISSING_MODULE.search(text)
    if missing and not isinstance(error, ModuleNotFoundError):
        return (
            f"on the executors: No module named '{missing.group(1)}' (their Python lacks it; "
            "ship the packed environment, `make pack-env`, see docs/operations.md)"
        )
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        head = line.removeprefix("Caused by: ").split(":", 1)[0]
        if head.endswith(("Error", "Exception")) and ": " in line and not line.startswith("at "):
            return line.removeprefix("Caused by: ")
    return lines[0] if lines else type(error).__name__


def run_job(name: str, body) -> int:
    """Run a job's `body()` (its exit code) and turn any failure into one line on stderr:
    `NAME: error: ...`, exit 2 for bad input (ValueError, FileNotFoundError), 1 otherwise."""
    try:
        return body()
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError) as error:
        print(f"{name}: error: {error_line(error)}", file=sys.stderr)
        return 2
    except Exception as error:  # noqa: BLE001 - a failed Spark task or I/O: say why in one line
        print(f"{name}: error: {error_line(error)}", file=sys.stderr)
        return 1


def absolute(uri: str) -> str:
    """A path without a scheme made absolute on the driver (executors would resolve a relative
    one against their own working directories); URIs are left as they are."""
    if "://" in uri or uri.startswith("file:"):
        return uri
    return os.path.abspath(os.path.expanduser(uri))


def spark_log_level_conf() -> dict[str, str]:
    """WARN by default (spark-submit's INFO is hundreds of lines); CURATION_SPARK_LOG_LEVEL or
    `--conf spark.log.level=...` overrides it."""
    return {"spark.log.level": os.environ.get("CURATION_SPARK_LOG_LEVEL", "WARN")}
