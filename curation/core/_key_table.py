"""Open-addressing hash tables (power-of-two size, linear probing) from byte or code-point
strings to their index, for the numba kernels: keys are one flat array plus offsets, and each
caller brings its own hash (EntryMatcher's 64-bit FNV-1a, fastText's 32-bit variant)."""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def build(hashes):
    """Slots holding key indices (-1 = empty); `hashes[k]` is the hash of key k."""
    size = 1
    while size < 2 * hashes.size + 2:
        size *= 2
    table = np.full(size, -1, dtype=np.int64)
    mask = np.uint64(size - 1)
    for key in range(hashes.size):
        slot = np.uint64(hashes[key]) & mask
        while table[slot] >= 0:
            slot = (slot + np.uint64(1)) & mask
        table[slot] = key
    return table


@njit(cache=True, nogil=True, inline="always")
def find(data, start, end, h, table, keys, key_offsets):
    """Index of the key equal to data[start:end] (hash h), or -1."""
    mask = np.uint64(table.size - 1)
    slot = np.uint64(h) & mask
    length = end - start
    while True:
        key = table[slot]
        if key < 0:
            return -1
        k0 = key_offsets[key]
        if key_offsets[key + 1] - k0 == length:
            same = True
            for i in range(length):
                if keys[k0 + i] != data[start + i]:
                    same = False
                    break
            if same:
                return key
        slot = (slot + np.uint64(1)) & mask
