"""BLAKE2b (RFC 7693) in numba, for the seeded per-record keys of `balance.py` in batches.

Equal to `hashlib.blake2b(digest_size=8, person=...)` over the same bytes (tests), but over a
whole Arrow column at once: the Python loop of hashlib calls cost more than the rest of the
reduce task on images with several texts.
"""

from __future__ import annotations

import sys

import numba
import numpy as np

if sys.byteorder != "little":  # blocks are read as native uint64 words
    raise ImportError("curation.core._blake2b needs a little-endian machine")

_IV = np.array(
    [
        0x6A09E667F3BCC908,
        0xBB67AE8584CAA73B,
        0x3C6EF372FE94F82B,
        0xA54FF53A5F1D36F1,
        0x510E527FADE682D1,
        0x9B05688C2B3E6C1F,
        0x1F83D9ABFB41BD6B,
        0x5BE0CD19137E2179,
    ],
    dtype=np.uint64,
)
_SIGMA = np.array(
    [
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
        [14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3],
        [11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4],
        [7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8],
        [9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13],
        [2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9],
        [12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11],
        [13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10],
        [6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5],
        [10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0],
    ],
    dtype=np.int64,
)


@numba.njit(cache=True, nogil=True, inline="always")
def _rotr(x, n):
    return (x >> np.uint64(n)) | (x << np.uint64(64 - n))


@numba.njit(cache=True, nogil=True, inline="always")
def _g(a, b, c, d, x, y):
    a = a + b + x
    d = _rotr(d ^ a, 32)
    c = c + d
    b = _rotr(b ^ c, 24)
    a = a + b + y
    d = _rotr(d ^ a, 16)
    c = c + d
    b = _rotr(b ^ c, 63)
    return a, b, c, d


@numba.njit(cache=True, nogil=True)
def _compress(h, m, counter, last, iv, sigma):
    """One block (m: its 16 little-endian words) into the state h."""
    v0, v1, v2, v3, v4, v5, v6, v7 = h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]
    v8, v9, v10, v11, v12, v13, v14, v15 = iv[0], iv[1], iv[2], iv[3], iv[4], iv[5], iv[6], iv[7]
    v12 ^= np.uint64(counter)
    if last:
        v14 = ~v14
    for r in range(12):
        s = sigma[r % 10]
        v0, v4, v8, v12 = _g(v0, v4, v8, v12, m[s[0]], m[s[1]])
        v1, v5, v9, v13 = _g(v1, v5, v9, v13, m[s[2]], m[s[3]])
        v2, v6, v10, v14 = _g(v2, v6, v10, v14, m[s[4]], m[s[5]])
        v3, v7, v11, v15 = _g(v3, v7, v11, v15, m[s[6]], m[s[7]])
        v0, v5, v10, v15 = _g(v0, v5, v10, v15, m[s[8]], m[s[9]])
        v1, v6, v11, v12 = _g(v1, v6, v11, v12, m[s[10]], m[s[11]])
        v2, v7, v8, v13 = _g(v2, v7, v8, v13, m[s[12]], m[s[13]])
        v3, v4, v9, v14 = _g(v3, v4, v9, v14, m[s[14]], m[s[15]])
    h[0] ^= v0 ^ v8
    h[1] ^= v1 ^ v9
    h[2] ^= v2 ^ v10
    h[3] ^= v3 ^ v11
    h[4] ^= v4 ^ v12
    h[5] ^= v5 ^ v13
    h[6] ^= v6 ^ v14
    h[7] ^= v7 ^ v15


@numba.njit(cache=True, nogil=True)
def _put_part(message, at, data, start, stop):
    """A part as hashed by balance._add_parts: its byte length (u64, little-endian), then it."""
    n = stop - start
    for j in range(8):
        message[at + j] = (n >> (8 * j)) & 0xFF
    at += 8
    for j in range(start, stop):
        message[at] = data[j]
        at += 1
    return at


@numba.njit(cache=True, nogil=True)
def digests64(prefix, offsets_a, data_a, offsets_b, data_b, parts, state0, iv, sigma):
    """The 8-byte BLAKE2b digest (as a little-endian uint64) of `prefix` + the length-prefixed
    row i of column a (and of column b when parts == 2), for every row."""
    rows = offsets_a.size - 1
    out = np.empty(rows, dtype=np.uint64)
    longest = 0
    for i in range(rows):
        size = offsets_a[i + 1] - offsets_a[i]
        if parts == 2:
            size += offsets_b[i + 1] - offsets_b[i]
        longest = max(longest, size)
    # whole 8-byte words, so that a block is read as 16 little-endian words in place
    words = np.zeros((prefix.size + 16 + longest + 128) // 8 + 1, dtype=np.uint64)
    message = words.view(np.uint8)
    message[: prefix.size] = prefix
    h = np.empty(8, dtype=np.uint64)
    for i in range(rows):
        at = _put_part(message, prefix.size, data_a, offsets_a[i], offsets_a[i + 1])
        if parts == 2:
            at = _put_part(message, at, data_b, offsets_b[i], offsets_b[i + 1])
        h[:] = state0
        done = 0
        while at - done > 128:  # every block but the last
            _compress(h, words[done // 8 : done // 8 + 16], done + 128, False, iv, sigma)
            done += 128
        message[at : done + 128] = 0  # the last block, zero-padded
        _compress(h, words[done // 8 : done // 8 + 16], at, True, iv, sigma)
        out[i] = h[0]
    return out


def initial_state(digest_size: int, person: bytes) -> np.ndarray:
    """h after the parameter block: no key, no salt, sequential mode."""
    state = _IV.copy()
    state[0] ^= np.uint64(0x01010000 | digest_size)
    personal = person.ljust(16, b"\0")
    state[6] ^= np.frombuffer(personal[:8], dtype="<u8")[0]
    state[7] ^= np.frombuffer(personal[8:], dtype="<u8")[0]
    return state


def hash_rows(prefix: bytes, person: bytes, *columns) -> np.ndarray:
    """digests64 over one or two (offsets, data) string buffers (hashing.string_buffers)."""
    (offsets_a, data_a), (offsets_b, data_b) = columns[0], columns[-1]
    return digests64(
        np.frombuffer(prefix, dtype=np.uint8),
        offsets_a,
        data_a,
        offsets_b,
        data_b,
        len(columns),
        initial_state(8, person),
        _IV,
        _SIGMA,
    )
