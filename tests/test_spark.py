import pyarrow as pa

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
