"""How records cross the curation job's one shuffle: as Arrow IPC blobs, one row per blob.

A map task hashes each record's uid to one of P reduce partitions, and sends each partition's
share of its records as one compressed Arrow IPC stream. The JVM moves a few rows per
(map task, partition) instead of converting, serializing and compressing every record.

The blob rows are repartitioned with Spark's own hash partitioning of an int `key` column.
`hashing.partition_keys(P)[p]` is a key that Spark sends to partition p: Spark's Murmur3 hash
is reproduced in curation/core/hashing.py and checked against Spark in tests, so every reduce
task gets exactly one
partition's records. A wrong guess would only unbalance the tasks: a reduce task processes
whatever it is sent, and every copy of a uid is always sent to the same task.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa

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
# the rows that cross the shuffle: a blob of records, or (blob null) a map task's input counts
BLOB_SCHEMA = "key int, records long, nulls long, blob binary"
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
    keys: np.ndarray,
    blob_bytes: int = BLOB_BYTES,
    order: np.ndarray | None = None,
) -> Iterator[tuple[int, bytes]]:
    """(key, blob) for each partition that `records` has rows for (`partition[i]` is row i's),
    the rows of a partition in their order in `records`, or in `order` (a permutation of the
    rows that keeps each partition's rows together, in ascending partition order); large
    shares in several blobs."""
    if order is None:
        order = np.argsort(partition, kind="stable")
    present = np.unique(partition)
    bounds = np.searchsorted(partition[order], np.append(present, len(keys)))
    records = records.take(order) if order.size else records
    row_bytes = max(1, records.nbytes // max(1, records.num_rows))
    rows_per_blob = max(1, blob_bytes // row_bytes)
    for p, start, stop in zip(present, bounds[:-1], bounds[1:]):
        for first in range(start, stop, rows_per_blob):
            share = records.slice(first, min(stop, first + rows_per_blob) - first)
            yield int(keys[p]), to_blob(share)


def to_blob(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    options = _LZ4 if table.nbytes >= COMPRESS_BYTES else _PLAIN
    with pa.ipc.new_stream(sink, table.schema, options=options) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def unpack(blobs: list) -> pa.Table:
    """The records of several blobs, as one table of RECORD_SCHEMA."""
    tables = [pa.ipc.open_stream(pa.py_buffer(blob)).read_all() for blob in blobs]
    return pa.concat_tables(tables) if tables else RECORD_SCHEMA.empty_table()
