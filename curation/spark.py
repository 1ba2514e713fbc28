"""Spark session helpers shared by the jobs and the tests."""

from __future__ import annotations

import os
import sys


def get_spark(app_name: str, master: str | None = None, conf: dict[str, str] | None = None):
    """The active session under spark-submit; a local one (all cores) under plain python.

    Executors must run the same Python as the driver, or they will not find pyarrow: unless the
    user set PYSPARK_PYTHON, point it at this interpreter.
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
    if master and master.startswith("local") and not _java_options_given():
        # A local run is one batch JVM: the throughput collector beats G1 (the JVM's default on
        # 2+ CPUs, tuned for pause times) by ~5% of wall time on the curation job.
        settings["spark.driver.extraJavaOptions"] = "-XX:+UseParallelGC"
    settings.update(conf or {})
    for key, value in settings.items():
        builder = builder.config(key, value)
    return builder.getOrCreate()


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
