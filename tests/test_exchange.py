"""The one shuffle of the curation job: uid hashes, Spark's partitioning, Arrow blobs."""

import numpy as np
import pyarrow as pa
import pytest

from curation.core import hashing
from curation.curate import exchange
from curation.identity import image_uid
from tests.curation_fixtures import caption_rows


@pytest.fixture(scope="module")
def records():
    """Real captions as RECORD_SCHEMA rows (entry_ids of varying length, some empty)."""
    rows = caption_rows(3000, ("ja", "el"))
    rng = np.random.default_rng(0)
    entry_ids = [sorted(rng.choice(500, rng.integers(0, 6), replace=False)) for _ in rows]
    return pa.table(
        {
            "uid": [image_uid(url, page) for url, page, _, _ in rows],
            "url": [r[0] for r in rows],
            "page_url": [r[1] for r in rows],
            "text": [r[2] for r in rows],
            "lang": [r[3] for r in rows],
            "entry_ids": entry_ids,
        },
        schema=exchange.RECORD_SCHEMA,
    )


def test_spark_int_hash_is_sparks_hash(spark):
    from pyspark.sql import functions as F

    values = np.array([0, 1, -1, 7, 42, 2**31 - 1, -(2**31), 123456789, -98765], dtype=np.int64)
    frame = spark.createDataFrame(pa.table({"k": pa.array(values, pa.int32())}))
    got = [row.h for row in frame.select(F.hash("k").alias("h")).collect()]
    assert got == hashing.spark_int_hash(values).tolist()


@pytest.mark.parametrize("partitions", [1, 3, 8, 61])
def test_each_partition_key_lands_in_its_own_partition(spark, partitions):
    from pyspark.sql import functions as F

    keys = hashing.partition_keys(partitions)
    assert len(set(keys.tolist())) == partitions and keys.min() >= 0
    table = pa.table({"key": keys, "p": pa.array(range(partitions), pa.int32())})
    shuffled = spark.createDataFrame(table).repartition(partitions, "key")
    rows = shuffled.select("p", F.spark_partition_id().alias("task")).collect()
    assert sorted((r.p, r.task) for r in rows) == [(p, p) for p in range(partitions)]


def test_uid_hash_is_the_same_for_every_arrow_layout(records):
    uids = records.column("uid").combine_chunks()
    hashes = hashing.uid_hashes(uids)
    assert hashes.dtype == np.uint64 and len(np.unique(hashes)) == len(set(uids.to_pylist()))
    assert np.array_equal(hashing.uid_hashes(uids.cast(pa.large_string())), hashes)
    assert np.array_equal(hashing.uid_hashes(uids.slice(100, 50)), hashes[100:150])
    chunked = pa.chunked_array([uids.slice(0, 10), uids.slice(10)])
    assert np.array_equal(hashing.uid_hashes(chunked), hashes)
    # the same bytes, the same hash: a uid's hash does not depend on its neighbours
    again = hashing.uid_hashes(pa.array(uids.to_pylist()[::-1]))
    assert np.array_equal(again[::-1], hashes)
    # spread: P partitions from the hash are close to even
    counts = np.bincount((hashes % np.uint64(8)).astype(np.int64), minlength=8)
    assert counts.min() > 0.8 * counts.mean()


def test_pack_sends_each_row_once_to_its_partition_in_order(records):
    partition = (hashing.uid_hashes(records.column("uid")) % np.uint64(5)).astype(np.int64)
    blobs = [
        (p, exchange.to_blob(share))
        for p, share in exchange.pack(records, partition, 5, blob_bytes=64 * 1024)
    ]
    per_partition = {}
    for p, blob in blobs:
        per_partition.setdefault(p, []).append(blob)
    assert len(blobs) > len(per_partition), "a 64 KiB cap splits partitions into several blobs"
    for p, parts in per_partition.items():
        expected = records.filter(pa.array(partition == p))
        assert exchange.unpack(parts).equals(expected)
    assert sum(exchange.unpack(parts).num_rows for parts in per_partition.values()) == len(records)
    assert exchange.unpack([]).num_rows == 0


def test_blob_files_read_back_as_the_blobs_do(records, tmp_path):
    """--exchange files: a share written as a file reads back as its bytes blob does, alone or
    mixed with bytes blobs, lz4-compressed or not; a rewrite (a retried task) replaces it
    whole and leaves no partial file behind."""
    big, small = records.slice(0, 2000), records.slice(2000, 20)
    assert big.nbytes >= exchange.COMPRESS_BYTES > small.nbytes
    paths = [str(tmp_path / "a.arrow"), str(tmp_path / "b.arrow")]
    for path, share in zip(paths, (big, small)):
        exchange.write_blob(path, share)
    exchange.write_blob(paths[0], big)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.arrow", "b.arrow"]
    assert exchange.unpack(paths).equals(records.slice(0, 2020))
    mixed = exchange.unpack([paths[1], exchange.to_blob(big)])
    assert mixed.equals(pa.concat_tables([small, big]))


def test_files_exchange_needs_a_local_master():
    assert exchange.uses_files("auto", "local[2]") and exchange.uses_files("files", "local")
    assert not exchange.uses_files("shuffle", "local[*]")
    assert not exchange.uses_files("auto", "spark://127.0.0.1:7077")
    assert not exchange.uses_files("auto", "local-cluster[2,1,1024]")
    with pytest.raises(ValueError, match="one machine|a local master"):
        exchange.uses_files("files", "spark://127.0.0.1:7077")


def test_exchange_folder_sweeps_dead_drivers_folders_and_checks_free_space(tmp_path, monkeypatch):
    """A driver killed before its cleanup leaves its blob files: the next run on the machine
    removes the folders of drivers that no longer run (a running one's stays). `auto` takes
    Spark's shuffle (None) where the files would not fit; `files` insists."""
    import os

    monkeypatch.setenv("SPARK_LOCAL_DIRS", f"{tmp_path},/elsewhere")
    dead, alive = (
        tmp_path / "curate-exchange-999999999-ab",
        tmp_path / f"curate-exchange-{os.getpid()}-cd",
    )
    for folder in (dead, alive):
        folder.mkdir()
        (folder / "000000-0-000000.arrow").write_bytes(b"x")
    (tmp_path / "other").mkdir()
    made = exchange.exchange_folder(None, 1000, "auto")
    assert made is not None and os.path.dirname(made) == str(tmp_path)
    assert not dead.exists() and alive.exists() and (tmp_path / "other").exists()
    assert exchange.exchange_folder(None, 10**18, "auto") is None
    assert exchange.exchange_folder(None, 10**18, "files") is not None
