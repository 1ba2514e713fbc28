"""The project's non-cryptographic hashes of strings and ints (docs/semantics.md, "Hash
families"): the 64-bit uid hash that places records in shuffle partitions and orders them, and
Spark's own Murmur3 hash of int keys, reproduced so that the driver knows which key reaches
which partition.
"""

from __future__ import annotations

import numba
import numpy as np
import pyarrow as pa

# --- uid hash --------------------------------------------------------------------------------


def string_buffers(array: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(offsets as int64, UTF-8 bytes as uint8) of a string array; nulls read as ''."""
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if array.type == pa.large_string():
        offset_type = np.int64
    elif array.type == pa.string():
        offset_type = np.int32
    else:
        raise TypeError(f"expected a string array, got {array.type}")
    _, offsets, data = array.buffers()
    if offsets is None:  # an empty array may have no buffers
        return np.zeros(1, np.int64), np.zeros(0, np.uint8)
    offsets = np.frombuffer(offsets, dtype=offset_type)[
        array.offset : array.offset + len(array) + 1
    ]
    data = np.zeros(0, np.uint8) if data is None else np.frombuffer(data, dtype=np.uint8)
    return offsets.astype(np.int64), data


@numba.njit(cache=True, nogil=True)
def _fnv1a_mixed(offsets, data):
    out = np.empty(offsets.size - 1, dtype=np.uint64)
    for i in range(offsets.size - 1):
        h = np.uint64(0xCBF29CE484222325)
        for j in range(offsets[i], offsets[i + 1]):
            h = (h ^ np.uint64(data[j])) * np.uint64(0x100000001B3)
        # splitmix64's finalizer: FNV's low bits are weak, and the partition is taken mod P
        h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        out[i] = h ^ (h >> np.uint64(31))
    return out


def uid_hashes(uids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A 64-bit hash of each uid's UTF-8 bytes: the same on every machine and Python process
    (unlike `hash()`), so partitions and the order within them never depend on PYTHONHASHSEED."""
    offsets, data = string_buffers(uids)
    return _fnv1a_mixed(offsets, data)


# --- Spark's hash partitioning of an int column ----------------------------------------------

_M32 = np.uint64(0xFFFFFFFF)


def _rotl32(x: np.ndarray, r: int) -> np.ndarray:
    return ((x << np.uint64(r)) | (x >> np.uint64(32 - r))) & _M32


def spark_int_hash(values: np.ndarray, seed: int = 42) -> np.ndarray:
    """Spark's `hash(int_column)`: Murmur3_x86_32.hashInt(value, 42), as int32."""
    k = values.astype(np.int64).astype(np.uint64) & _M32
    k = (k * np.uint64(0xCC9E2D51)) & _M32
    k = _rotl32(k, 15)
    k = (k * np.uint64(0x1B873593)) & _M32
    h = np.full(k.shape, seed, dtype=np.uint64) ^ k
    h = _rotl32(h, 13)
    h = (h * np.uint64(5) + np.uint64(0xE6546B64)) & _M32
    h ^= np.uint64(4)  # the length in bytes
    h ^= h >> np.uint64(16)
    h = (h * np.uint64(0x85EBCA6B)) & _M32
    h ^= h >> np.uint64(13)
    h = (h * np.uint64(0xC2B2AE35)) & _M32
    h ^= h >> np.uint64(16)
    return h.astype(np.uint32).view(np.int32)


def spark_partition_of(keys: np.ndarray, num_partitions: int) -> np.ndarray:
    """The partition `df.repartition(num_partitions, "key")` sends each int key to: the
    non-negative remainder of its hash (Spark's pmod)."""
    return np.mod(spark_int_hash(keys).astype(np.int64), num_partitions)


def partition_keys(num_partitions: int) -> np.ndarray:
    """The smallest non-negative int key that Spark sends to each of the partitions."""
    keys = np.full(num_partitions, -1, dtype=np.int64)
    start, step = 0, max(1024, 16 * num_partitions)
    while (keys < 0).any():
        candidates = np.arange(start, start + step, dtype=np.int64)
        targets = spark_partition_of(candidates, num_partitions)
        first = np.unique(targets, return_index=True)
        for target, index in zip(*first):
            if keys[target] < 0:
                keys[target] = candidates[index]
        start += step
    return keys.astype(np.int32)
