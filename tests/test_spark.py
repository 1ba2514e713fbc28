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
    from curation import spark as spark_helpers

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
