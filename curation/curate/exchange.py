"""How records cross the curation job's one shuffle: as Arrow IPC blobs, a few per task pair.

A map task hashes each record's uid to one of P reduce partitions, and sends each partition's
share of its records as one Arrow IPC stream. Spark moves a few (partition, blob) pairs per
(map task, partition) instead of converting, serializing and compressing every record.

The pairs go through an RDD's `partitionBy(P)` whose partition function is the identity: the
key is the reduce partition itself, so every reduce task gets exactly its partition's records,
and every copy of a uid reaches the same task. The job's own steps are plain RDDs of Python
tasks: no SQL query is planned for them (a DataFrame plan of the same three jobs cost ~1.8
CPU-s more of the JVM's time at start-up); only `--input-reader spark` reads the input as a
DataFrame, whose blob rows (BLOB_SCHEMA) join the same RDD.

Two ways to move a blob (`--exchange`):
- `shuffle`: the pair carries the blob's bytes (lz4 above COMPRESS_BYTES), moved by Spark's
  shuffle (any cluster);
- `files`: the map task writes it as an uncompressed Arrow IPC file in a folder every task can
  read (every task on this machine: a local master), and the pair carries its path; the reduce
  task maps it into memory. This spares the JVM copying every byte, and both sides the lz4
  work: at 3M records on one core ~4 CPU-s of ~27. The folder lives under the first of Spark's
  local directories, for the one job (it holds the matched records uncompressed: 868 MB for
  375 MB of Parquet input at 3M records), and is removed when its stage ends, or by the next
  run after a driver killed before that; `auto` takes the shuffle where that space is not free.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator

import numpy as np
import pyarrow as pa

from curation.core import tables

RECORD_SCHEMA = pa.schema(
    [
        ("uid", pa.string()),
        ("url", pa.string()),
        ("page_url", pa.string()),
        ("text", pa.string()),
        ("lang", pa.string()),
        ("entry_ids", pa.list_(pa.int32())),
    ]
)
# a blob's records carry their hashing.uid_hashes too, computed once, on the map side
UID_HASH = "uid_hash"
# the rows that cross the shuffle: a blob of records (its bytes, or the path of its file with
# --exchange files), or (both null) a map task's input counts
BLOB_SCHEMA = "key int, records long, nulls long, blob binary, path string"
EXCHANGES = ("auto", "shuffle", "files")
BLOB_BYTES = 32 * 2**20  # uncompressed Arrow bytes per blob, at most (one large image aside)
# lz4 costs ~15 us per Arrow buffer: a small share (many partitions, few records each) is sent
# as it is (readers see which from the message itself)
COMPRESS_BYTES = 64 * 2**10
_LZ4 = pa.ipc.IpcWriteOptions(compression="lz4")
_PLAIN = pa.ipc.IpcWriteOptions(compression=None)


# --- blobs -----------------------------------------------------------------------------------


def pack(
    records: pa.Table,
    partition: np.ndarray,
    partitions: int,
    blob_bytes: int = BLOB_BYTES,
    order: np.ndarray | None = None,
) -> Iterator[tuple[int, pa.Table]]:
    """(partition, share) for each of the `partitions` that `records` has rows for
    (`partition[i]` is row i's), the rows of a partition in their order in `records`, or in
    `order` (a permutation of the rows that keeps each partition's rows together, in ascending
    partition order); large shares in several pieces of at most `blob_bytes`. `to_blob` or
    `write_blob` sends one."""
    if order is None:
        order = np.argsort(partition, kind="stable")
    present = np.unique(partition)
    bounds = np.searchsorted(partition[order], np.append(present, partitions))
    records = records.take(order) if order.size else records
    row_bytes = max(1, records.nbytes // max(1, records.num_rows))
    rows_per_blob = max(1, blob_bytes // row_bytes)
    for p, start, stop in zip(present, bounds[:-1], bounds[1:]):
        for first in range(start, stop, rows_per_blob):
            share = records.slice(first, min(stop, first + rows_per_blob) - first)
            yield int(p), share


def _write_stream(sink, table: pa.Table) -> None:
    options = _LZ4 if table.nbytes >= COMPRESS_BYTES else _PLAIN
    with pa.ipc.new_stream(sink, table.schema, options=options) as writer:
        writer.write_table(table)


def to_blob(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    _write_stream(sink, table)
    return sink.getvalue().to_pybytes()


def write_blob(path: str, table: pa.Table) -> None:
    """The blob of `table` as an uncompressed local file, published whole (`tables.published`):
    a reader never sees half of one."""
    with tables.published(path) as sink:
        with pa.ipc.new_stream(sink, table.schema, options=_PLAIN) as writer:
            writer.write_table(table)


def unpack(blobs: list) -> pa.Table:
    """The records of several blobs (bytes or buffers, or paths of `write_blob` files), as one
    table of RECORD_SCHEMA (and UID_HASH, if the blobs have it)."""
    tables = []
    for blob in blobs:
        if isinstance(blob, str):  # closing the file keeps the mapping the table uses
            with pa.memory_map(blob) as source:
                tables.append(pa.ipc.open_stream(source).read_all())
        else:
            tables.append(pa.ipc.open_stream(pa.py_buffer(blob)).read_all())
    return pa.concat_tables(tables) if tables else RECORD_SCHEMA.empty_table()


# free space the blob files need under the local directory, per byte of Parquet input (measured
# 2.3x at 3M records: the matched records as uncompressed Arrow)
FILES_PER_INPUT_BYTE = 2.5
_PREFIX = "curate-exchange-"


def local_directory(spark) -> str:
    """The first of Spark's local directories, in Spark's order: SPARK_LOCAL_DIRS, else
    spark.local.dir, else the system's temporary folder."""
    configured = os.environ.get("SPARK_LOCAL_DIRS") or spark.sparkContext.getConf().get(
        "spark.local.dir", None
    )
    return (configured or tempfile.gettempdir()).split(",")[0]


def exchange_folder(spark, input_bytes: int, exchange: str) -> str | None:
    """A new folder for one job's blob files under Spark's local directory, named after this
    driver's pid; folders left by drivers that no longer run (killed before their cleanup) are
    removed first. None, with `auto`, where the free space is below the files' estimate."""
    root = local_directory(spark)
    os.makedirs(root, exist_ok=True)
    for name in os.listdir(root):
        if not name.startswith(_PREFIX):
            continue
        pid = name[len(_PREFIX) :].split("-")[0]
        if pid.isdigit() and not _running(int(pid)):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    if exchange == "auto" and shutil.disk_usage(root).free < FILES_PER_INPUT_BYTE * input_bytes:
        return None
    return tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-", dir=root)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def uses_files(exchange: str, master: str) -> bool:
    """Whether `--exchange` moves blobs as files: `files`, or `auto` with a local master (every
    task on this machine; `local-cluster` is several executors, treated as a cluster)."""
    local = master == "local" or master.startswith("local[")
    if exchange == "files" and not local:
        raise ValueError(
            f"--exchange files needs every task on this machine (a local master), not {master}"
        )
    return exchange == "files" or (exchange == "auto" and local)
