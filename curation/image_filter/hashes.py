"""Image identity for de-duplication and blocklists: exact digests of the stored bytes and PDQ,
the perceptual hash used for industry hash sharing (docs/filtering.md says why PDQ, and why
these thresholds: both were measured on re-encoded, resized and cropped photographs).

A PDQ hash is 256 bits, kept as 64 hex characters (the format hash lists exchange) and, for
distance computations, as four uint64 words per image.
"""

from __future__ import annotations

import hashlib

import numpy as np

PDQ_BITS = 256
# Below this PDQ quality (0-100: how much gradient the image has) PDQ's authors advise not to
# match: a flat image's hash flips under re-encoding (measured: a featureless tile re-encoded at
# quality 60 moved 102 bits, more than distinct photographs are apart).
PDQ_MIN_QUALITY = 50
# Near-copies (quality 60, 90% size, 5% crop) of photographs moved at most 86 bits; distinct
# photographs were at least 100 apart (benchmarks/bench_filter.py --hashes).
DEFAULT_NEAR_DUPLICATE_BITS = 90
# ThreatExchange's own matching threshold for shared PDQ lists.
BLOCKLIST_PDQ_BITS = 31


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def md5_hex(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def pdq(rgb: np.ndarray) -> tuple[str, int]:
    """PDQ hash (64 hex characters) and quality of an H x W x 3 uint8 image."""
    import pdqhash  # the filter extra; a compiled extension, loaded where images are hashed

    bits, quality = pdqhash.compute(np.ascontiguousarray(rgb))
    return bits_to_hex(np.asarray(bits, dtype=bool)), int(quality)


def bits_to_hex(bits: np.ndarray) -> str:
    """PDQ's bit order: bit i of the vector is bit (i % 8) of byte 31 - i // 8 of the hex
    string, as ThreatExchange's hashes print (most significant byte first)."""
    packed = np.packbits(bits.astype(np.uint8)[::-1])
    return packed.tobytes().hex()


def hex_to_words(hexes: list[str]) -> np.ndarray:
    """N x 4 uint64 words of N PDQ hex strings (raises ValueError on a malformed one)."""
    words = np.zeros((len(hexes), 4), dtype=np.uint64)
    for i, text in enumerate(hexes):
        if len(text) != 64:
            raise ValueError(f"not a 64-hex-digit PDQ hash: {text[:70]!r}")
        words[i] = np.frombuffer(bytes.fromhex(text), dtype=">u8").astype(np.uint64)
    return words


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bit distances between every row of `a` (N x 4 words) and every row of `b` (M x 4):
    an N x M int array."""
    distance = np.zeros((len(a), len(b)), dtype=np.int32)
    for word in range(a.shape[1]):
        distance += np.bitwise_count(a[:, word, None] ^ b[None, :, word])
    return distance


def pairs_within(
    a: np.ndarray, b: np.ndarray, bits: int, same: bool = False, block: int = 2048
) -> list[tuple[int, int, int]]:
    """(i, j, distance) of every pair of rows of `a` and `b` at most `bits` apart, compared
    exhaustively in blocks (N x M distances; i < j when `a` and `b` are the same set)."""
    found = []
    for start in range(0, len(a), block):
        stop = min(start + block, len(a))
        first = start if same else 0
        for other in range(first, len(b), block):
            distance = hamming(a[start:stop], b[other : other + block])
            rows, cols = np.nonzero(distance <= bits)
            for i, j in zip(rows.tolist(), cols.tolist()):
                i, j = i + start, j + other
                if not same or i < j:
                    found.append((i, j, int(distance[i - start, j - other])))
    return found
