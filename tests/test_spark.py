import pyarrow as pa
import pytest

from curation.matching import EntryMatcher


def test_local_spark_runs_python_workers_with_pyarrow(spark):
    """The executors find this venv's pyarrow (PYSPARK_PYTHON) and can build automata."""
    df = spark.createDataFrame([("a cat on a mat",), ("no match",)], "text string")

    def match(batches):
        matcher = EntryMatcher(["cat", "mat"])
        for batch in batches:
            texts = batch.column("text").to_pylist()
            ids = matcher.match_many(texts)
            yield pa.RecordBatch.from_pydict(
                {"text": texts, "n": [len(i) for i in ids]},
                schema=pa.schema([("text", pa.string()), ("n", pa.int64())]),
            )

    rows = sorted(df.mapInArrow(match, "text string, n long").collect())
    assert [(r.text, r.n) for r in rows] == [("a cat on a mat", 2), ("no match", 0)]


def test_local_sessions_use_the_throughput_collector_unless_the_user_set_jvm_options(
    spark, monkeypatch
):
    from curation.core import spark as spark_helpers

    if spark_helpers._java_options_given():
        pytest.skip("this environment passes its own JVM options")
    jvm = spark.sparkContext._jvm
    collectors = [
        bean.getName()
        for bean in jvm.java.lang.management.ManagementFactory.getGarbageCollectorMXBeans()
    ]
    assert collectors == ["PS MarkSweep", "PS Scavenge"], collectors
    monkeypatch.setenv("PYSPARK_SUBMIT_ARGS", "--driver-java-options '-XX:+UseG1GC' pyspark-shell")
    assert spark_helpers._java_options_given()
    monkeypatch.delenv("PYSPARK_SUBMIT_ARGS")
    monkeypatch.setenv("JAVA_TOOL_OPTIONS", "-XX:+UseZGC")
    assert spark_helpers._java_options_given()


def test_local_sessions_map_the_spark_class_archive(tmp_path, monkeypatch):
    """The class archive `make` builds is given to local sessions, and the JVM maps it: with
    CURATION_SPARK_CDS=require it is started with -Xshare:on, which refuses to start without."""
    import os
    import subprocess
    import sys

    from curation.core import spark as spark_cds
    from tests.conftest import PROJECT_ROOT

    path = spark_cds.archive_path()
    if path is None or not path.is_file():
        pytest.skip("no Spark class archive in this environment (`make` builds it)")
    assert spark_cds.archive_java_options() == f" -XX:SharedArchiveFile={path}"
    code = (
        "from curation.core.spark import get_spark\n"
        "spark = get_spark('cds', 'local[1]')\n"
        "print(spark.sparkContext.getConf().get('spark.driver.extraJavaOptions'))\n"
        "print(spark.range(5).count())\n"
    )
    env = {**os.environ, "CURATION_SPARK_CDS": "require"}
    env.pop("PYSPARK_SUBMIT_ARGS", None)
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=PROJECT_ROOT, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    options, count = result.stdout.strip().splitlines()[-2:]
    assert f"-XX:SharedArchiveFile={path} -Xshare:on" in options and count == "5"

    monkeypatch.setenv("CURATION_SPARK_CDS", "0")
    assert spark_cds.archive_java_options() == ""
    monkeypatch.setenv("CURATION_SPARK_CDS", "1")
    monkeypatch.setenv("CURATION_SPARK_CDS_DIR", str(tmp_path))
    assert spark_cds.archive_java_options() == "", "no archive for this JDK and Spark: no option"


def _worker_memory_settings(spark) -> dict:
    """What a Python worker of a job planned now sees: its Arrow pool and the variables."""
    names = ["JE_ARROW_MALLOC_CONF", "MALLOC_TRIM_THRESHOLD_"]

    def probe(batches):
        import os

        for _ in batches:
            yield pa.RecordBatch.from_pydict(
                {
                    "pool": [pa.default_memory_pool().backend_name],
                    **{name: [os.environ.get(name)] for name in names},
                }
            )

    schema = "pool string, " + ", ".join(f"{name} string" for name in names)
    return spark.range(1, numPartitions=1).mapInArrow(probe, schema).collect()[0].asDict()


def test_python_worker_env_reaches_the_workers_then_goes_away(spark):
    """The curation job's allocator settings (KEEP_FREED_MEMORY) reach the Python workers of
    the jobs planned inside the block, through SparkContext.environment (so under spark-submit
    too), and a variable the user set for the executors wins."""
    import os

    from curation.core.spark import KEEP_FREED_MEMORY, _has_jemalloc, python_worker_env

    if any(name in os.environ for name in KEEP_FREED_MEMORY):
        pytest.skip("this environment sets the allocator variables itself")
    before = _worker_memory_settings(spark)
    assert before["JE_ARROW_MALLOC_CONF"] is None and before["pool"] != "jemalloc"
    with python_worker_env(spark, KEEP_FREED_MEMORY):
        inside = _worker_memory_settings(spark)
    assert inside["pool"] == ("jemalloc" if _has_jemalloc() else before["pool"])
    assert inside["JE_ARROW_MALLOC_CONF"] == "dirty_decay_ms:-1,muzzy_decay_ms:-1"
    assert inside["MALLOC_TRIM_THRESHOLD_"] == str(2**30)
    assert _worker_memory_settings(spark) == before  # back to the session's own environment

    spark.sparkContext.environment["MALLOC_TRIM_THRESHOLD_"] = "12345"  # the user's
    try:
        with python_worker_env(spark, KEEP_FREED_MEMORY):
            assert _worker_memory_settings(spark)["MALLOC_TRIM_THRESHOLD_"] == "12345"
        assert spark.sparkContext.environment["MALLOC_TRIM_THRESHOLD_"] == "12345"
    finally:
        del spark.sparkContext.environment["MALLOC_TRIM_THRESHOLD_"]


def test_the_curation_job_plans_its_queries_without_generated_code_and_restores_the_conf(spark):
    """JOB_SQL_CONF turns off whole-stage and expression code generation for the job (the query
    of `--input-reader spark` moves a few blob rows between Python tasks; compiling Java for it
    cost the JVM more than running it interpreted), and _session_conf gives the session its own
    values back afterwards."""
    from curation.curate.job import JOB_SQL_CONF, _session_conf

    def executed_plan(df) -> str:
        return df._jdf.queryExecution().executedPlan().toString()

    query = spark.range(1000).selectExpr("id * 2 AS x").where("x % 3 = 0")
    key = "spark.sql.codegen.wholeStage"
    before = spark.conf.get(key)
    assert "*(" in executed_plan(query)  # the session's default: generated stages
    with _session_conf(spark, JOB_SQL_CONF):
        interpreted = spark.range(1000).selectExpr("id * 2 AS x").where("x % 3 = 0")
        assert "*(" not in executed_plan(interpreted)
        assert sum(row.x for row in interpreted.collect()) == sum(
            2 * i for i in range(1000) if (2 * i) % 3 == 0
        )
    assert spark.conf.get(key) == before
    assert spark.conf.get("spark.sql.codegen.factoryMode") != "NO_CODEGEN"


def test_local_workers_import_pyspark_from_the_installed_package(spark):
    """Local sessions run core/pyspark_daemon.py: the workers import this venv's pyspark (with
    its bytecode cache) instead of compiling Spark's pyspark.zip, whose version it equals."""
    import pyspark

    def where(batches):
        import pyspark as worker_pyspark

        for _ in batches:
            yield pa.RecordBatch.from_pydict({"file": [worker_pyspark.__file__]})

    import os

    files = {r.file for r in spark.range(1).mapInArrow(where, "file string").collect()}
    assert spark.sparkContext.getConf().get("spark.python.daemon.module") == (
        "curation.core.pyspark_daemon"
    )
    assert ".zip" not in pyspark.__file__  # (a linked venv: compare the files, not the paths)
    assert {os.path.realpath(f) for f in files} == {os.path.realpath(pyspark.__file__)}


def test_the_daemon_keeps_spark_archives_of_another_version_first(tmp_path):
    """Only an archive whose version file equals the installed one moves; one of another
    version (a cluster's Spark against an older pip pyspark), or with nothing installed, stays
    first, as Spark put it."""
    import sys
    import zipfile
    from pathlib import Path

    import pyspark

    from curation.core.pyspark_daemon import prefer_installed

    installed = Path(pyspark.__file__).parents[1]
    same, other = tmp_path / "same" / "pyspark.zip", tmp_path / "other" / "pyspark.zip"
    for archive, text in ((same, (installed / "pyspark" / "version.py").read_text()),
                          (other, '__version__: str = "0.0.1"\n')):  # fmt: skip
        archive.parent.mkdir()
        with zipfile.ZipFile(archive, "w") as bundle:
            bundle.writestr("pyspark/version.py", text)
    path = [str(same), str(installed), "/nowhere"]
    assert prefer_installed(path) == [str(installed), "/nowhere", str(same)]
    path = [str(other), str(installed)]
    assert prefer_installed(path) == path
    assert prefer_installed([str(same), "/nowhere"]) == [str(same), "/nowhere"]
    partial = tmp_path / "partial"  # the same version file, without the worker's modules
    (partial / "pyspark").mkdir(parents=True)
    (partial / "pyspark" / "version.py").write_bytes(
        (installed / "pyspark" / "version.py").read_bytes()
    )
    assert prefer_installed([str(same), str(partial)]) == [str(same), str(partial)]
    assert prefer_installed(sys.path) == sys.path  # nothing to move in the test process
