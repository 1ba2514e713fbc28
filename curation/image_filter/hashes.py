"""Image identity for de-duplication, decontamination and blocklists: exact digests of the
stored bytes, PDQ (the perceptual hash of industry hash sharing: blocklists carry it) and a
256-bit pHash (imagehash's DCT hash at hash_size 16), which finds near-copies.

Why two perceptual hashes (benchmarks/bench_filter.py --sections hashes, docs/filtering.md): on
tiles of real photographs, near-copies (quality 60, 90% size, 5% centred crop) moved PDQ by up
to 86 bits with distinct pictures 100 apart, and the 256-bit pHash by up to 70 with distinct
pictures 102 apart. At the threshold each needs, the demo's 2,725 crops of a dozen photographs
held 38 pairs of different photographs within 90 PDQ bits, and 1 within 80 pHash bits.

Both are 256 bits, kept as 64 hex characters and, for distances, as four uint64 words.
"""

from __future__ import annotations

import hashlib

import numpy as np

PDQ_BITS = 256
# Below this PDQ quality (0-100: how much gradient the image has) PDQ's authors advise not to
# match: a flat image's hash flips under re-encoding (measured: a featureless tile re-encoded at
# quality 60 moved 102 bits, more than distinct photographs are apart).
PDQ_MIN_QUALITY = 50
# pHash-256 bits: near-copies (quality 60, 90% size, 5% centred crop) of photographs moved at
# most 70 (78 counting featureless tiles); distinct photographs were at least 102 apart.
DEFAULT_NEAR_DUPLICATE_BITS = 80
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


def phash(image) -> str:
    """imagehash's pHash of a PIL image at hash_size 16 (256 bits), as 64 hex characters."""
    import imagehash  # the filter extra

    return str(imagehash.phash(image, hash_size=16))


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
