"""fastText supervised-model inference in numba: the same answers as fastText's `predict`.

`FastTextModel.load` reads a fastText binary model (`.bin`, or a quantized `.ftz` such as
lid.176) with numpy and struct, dequantizes the input matrix into dense float32 rows, and
predicts batches of texts given as one UTF-8 byte buffer plus int64 offsets (Arrow's layout)
without a Python call per text. It follows fastText 0.9.2 (the source fasttext-predict builds):

- a line is read word by word; words split on the bytes ` \\n\\r\\t\\v\\f\\0`, a newline ends the
  line as the token `</s>` and nothing after it is read;
- a word's rows are its vocabulary row (if any) then its character n-grams of `<word>`
  (minn..maxn UTF-8 characters, no 1-gram at either end), hashed with 32-bit FNV-1a over
  sign-extended bytes, taken modulo `bucket` and mapped through the pruning index of `.ftz`
  models; words starting with `__label__` are skipped; word n-grams (wordNgrams > 1) follow;
- the hidden vector is the float32 average of those rows; hierarchical softmax walks the
  Huffman tree of label counts depth first with fastText's pruning, softmax and one-vs-all
  score every label; a probability is exp(log(p + 1e-5)) in float32, as fastText reports it.

Arithmetic is float32 in fastText's order, so probabilities match fasttext-predict's to the
last bit or so, and ties resolve the same way (the later label wins).
"""

from __future__ import annotations

import math
import mmap
import struct
from pathlib import Path

import numpy as np
from numba import njit

from curation.core import _key_table as key_table

MAGIC = 793712314
MAX_VERSION = 12
LABEL_PREFIX = b"__label__"
EOS = b"</s>"
LOSS_HS, LOSS_NS, LOSS_SOFTMAX, LOSS_OVA = 1, 2, 3, 4
MODEL_SUPERVISED = 3
_ARGS = struct.Struct("<12id")
_ARG_NAMES = (
    "dim", "ws", "epoch", "minCount", "neg", "wordNgrams", "loss", "model", "bucket",
    "minn", "maxn", "lrUpdateRate",
)  # fmt: skip
# pushHash modes: a pruned model without n-gram rows, a full model, a pruned one
PRUNE_NONE, PRUNE_IDENTITY, PRUNE_TABLE = 0, 1, 2


class _Reader:
    def __init__(self, data, path):
        self.data, self.path, self.offset = data, path, 0

    def unpack(self, fmt: str):
        values = struct.unpack_from(fmt, self.data, self.offset)
        self.offset += struct.calcsize(fmt)
        return values

    def array(self, dtype, count: int) -> np.ndarray:
        dtype = np.dtype(dtype)
        if count < 0 or self.offset + count * dtype.itemsize > len(self.data):
            raise ValueError(f"{self.path}: truncated fastText model")
        array = np.frombuffer(self.data, dtype=dtype, count=count, offset=self.offset)
        self.offset += count * dtype.itemsize
        return array


def read_header(data, path="model") -> tuple[dict, list[tuple[bytes, int, int]], dict, _Reader]:
    """(args, dictionary entries (word, count, type), pruneidx, reader after the dictionary)."""
    reader = _Reader(data, path)
    if len(data) < 8 + _ARGS.size:
        raise ValueError(f"{path}: not a fastText model (too short)")
    magic, version = reader.unpack("<ii")
    if magic != MAGIC:
        raise ValueError(f"{path}: not a fastText model (magic {magic})")
    if version > MAX_VERSION:
        raise ValueError(f"{path}: fastText model version {version} is newer than {MAX_VERSION}")
    *ints, t = reader.unpack(_ARGS.format)
    args = dict(zip(_ARG_NAMES, ints), t=t, version=version)
    if version == 11 and args["model"] == MODEL_SUPERVISED:
        args["maxn"] = 0  # fastText: old supervised models have no char n-grams
    size, nwords, nlabels, _ntokens, prune_size = reader.unpack("<iiiqq")
    entries = []
    offset = reader.offset
    for _ in range(size):
        end = data.find(b"\0", offset)
        if end < 0:
            raise ValueError(f"{path}: truncated fastText dictionary")
        count, entry_type = struct.unpack_from("<qb", data, end + 1)
        entries.append((bytes(data[offset:end]), count, entry_type))
        offset = end + 10
    reader.offset = offset
    if sum(entry[2] == 1 for entry in entries) != nlabels or size != nwords + nlabels:
        raise ValueError(f"{path}: dictionary sizes disagree with its header")
    pruneidx = {}
    if prune_size > 0:
        pairs = reader.array("<i4", 2 * prune_size).reshape(-1, 2)
        pruneidx = dict(zip(pairs[:, 0].tolist(), pairs[:, 1].tolist()))
    args.update(nwords=nwords, nlabels=nlabels, prune_size=prune_size)
    return args, entries, pruneidx, reader


def _read_pq(reader: _Reader) -> tuple[int, int, int, int, np.ndarray]:
    dim, nsubq, dsub, lastdsub = reader.unpack("<iiii")
    return dim, nsubq, dsub, lastdsub, reader.array("<f4", dim * 256)


def _pq_rows(pq, codes: np.ndarray) -> np.ndarray:
    """Dense float32 rows from product-quantizer codes (m x nsubq)."""
    dim, nsubq, dsub, lastdsub, centroids = pq
    rows = np.empty((codes.shape[0], dim), dtype=np.float32)
    for m in range(nsubq):
        d = lastdsub if m == nsubq - 1 else dsub
        table = centroids[m * 256 * dsub : m * 256 * dsub + 256 * d].reshape(256, d)
        rows[:, m * dsub : m * dsub + d] = table[codes[:, m]]
    return rows


def _read_matrix(reader: _Reader, quantized: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """(float32 rows, per-row norms or None); quantized rows keep fastText's norm factor apart."""
    if not quantized:
        m, n = reader.unpack("<qq")
        return reader.array("<f4", m * n).reshape(m, n), None
    (qnorm,) = reader.unpack("<?")
    m, n, codesize = reader.unpack("<qqi")
    codes = reader.array("u1", codesize)
    pq = _read_pq(reader)
    nsubq = pq[1]
    if codesize != m * nsubq or pq[0] != n:
        raise ValueError(f"{reader.path}: inconsistent quantized matrix")
    rows = _pq_rows(pq, codes.reshape(m, nsubq))
    norms = None
    if qnorm:
        norm_codes = reader.array("u1", m)
        norm_pq = _read_pq(reader)
        norms = norm_pq[4][norm_codes].astype(np.float32)  # a 1-dim quantizer: centroid k
    return rows, norms


def fasttext_hash(word: bytes) -> int:
    """fastText's 32-bit FNV-1a, XOR-ing each byte sign-extended (as trained models expect)."""
    h = 2166136261
    for byte in word:
        h = ((h ^ (byte | 0xFFFFFF00 if byte >= 128 else byte)) * 16777619) & 0xFFFFFFFF
    return h


def _huffman_tree(counts: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(left, right) children of fastText's hierarchical-softmax tree; leaves are labels."""
    n = len(counts)
    total = 2 * n - 1
    count = list(counts) + [10**15] * (n - 1)
    left, right = [-1] * total, [-1] * total
    leaf, node = n - 1, n
    for i in range(n, total):
        pair = []
        for _ in range(2):
            if leaf >= 0 and count[leaf] < count[node]:
                pair.append(leaf)
                leaf -= 1
            else:
                pair.append(node)
                node += 1
        left[i], right[i] = pair
        count[i] = count[pair[0]] + count[pair[1]]
    return np.array(left, dtype=np.int32), np.array(right, dtype=np.int32)


def _sigmoid_table() -> np.ndarray:
    x = np.arange(513, dtype=np.float32) * np.float32(16) / np.float32(512) - np.float32(8)
    return (1.0 / (1.0 + np.exp(-x).astype(np.float64))).astype(np.float32)


class FastTextModel:
    """A fastText supervised model held as numpy arrays; see the module docstring."""

    def __init__(self, path: str | Path):
        self.path = str(path)
        with open(self.path, "rb") as f:
            try:
                data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
            except ValueError:  # empty file
                data = b""
        args, entries, pruneidx, reader = read_header(data, self.path)
        if args["model"] != MODEL_SUPERVISED:
            raise ValueError(f"{self.path}: not a supervised fastText model")
        if args["loss"] not in (LOSS_HS, LOSS_NS, LOSS_SOFTMAX, LOSS_OVA):
            raise ValueError(f"{self.path}: unknown fastText loss {args['loss']}")
        self.args = args
        nwords, nlabels = args["nwords"], args["nlabels"]
        words = [entry[0] for entry in entries]
        self.labels = [word.decode("utf-8", "replace") for word in words[nwords:]]
        (quant_input,) = reader.unpack("<?")
        self.input, input_norms = _read_matrix(reader, quant_input)
        if input_norms is not None:
            self.input = self.input * input_norms[:, None]  # what fastText adds per row
        if not quant_input and args["prune_size"] >= 0:
            raise ValueError(f"{self.path}: pruned model without a quantized input matrix")
        (qout,) = reader.unpack("<?")
        self.output, output_norms = _read_matrix(reader, quant_input and qout)
        self.output_norms = (
            output_norms if output_norms is not None else np.ones(nlabels, dtype=np.float32)
        )
        dim = args["dim"]
        if self.input.shape[1] != dim or self.output.shape != (nlabels, dim):
            raise ValueError(f"{self.path}: matrix shapes disagree with dim/labels")
        self.input = np.ascontiguousarray(self.input, dtype=np.float32)
        self.output = np.ascontiguousarray(self.output, dtype=np.float32)
        self._mmap = data  # dense .bin matrices are views into the mapped file

        self.word_bytes = np.frombuffer(bytearray(b"".join(words)), dtype=np.uint8)
        self.word_offsets = np.cumsum([0] + [len(w) for w in words], dtype=np.int64)
        self.word_table = _word_table(self.word_bytes, self.word_offsets)
        if args["prune_size"] == 0:
            mode, prune = PRUNE_NONE, np.full((1, 2), -1, dtype=np.int32)
        elif args["prune_size"] < 0:
            mode, prune = PRUNE_IDENTITY, np.full((1, 2), -1, dtype=np.int32)
        else:
            keys = np.fromiter(pruneidx.keys(), dtype=np.int32, count=len(pruneidx))
            rows = np.fromiter(pruneidx.values(), dtype=np.int32, count=len(pruneidx))
            mode, prune = PRUNE_TABLE, _prune_table(keys, rows)
        if args["maxn"] > 0 and args["bucket"] <= 0:
            mode = PRUNE_NONE
        ngram_rows = {PRUNE_NONE: 0, PRUNE_IDENTITY: args["bucket"]}.get(mode)
        if ngram_rows is None:
            ngram_rows = int(prune[:, 1].max()) + 1
        if self.input.shape[0] < nwords + ngram_rows:  # the kernels do not bounds-check
            raise ValueError(f"{self.path}: input matrix has fewer rows than the dictionary uses")
        self.prune_table = prune
        counts = [entry[1] for entry in entries[nwords:]]
        left, right = _huffman_tree(counts) if nlabels else (np.zeros(0, np.int32),) * 2
        eos = -1
        if EOS in words:
            eos = words.index(EOS)  # nothing else can share the exact bytes
        # int64 parameters in one array, so the kernels keep a short signature
        self.params = np.array(
            [
                nwords, dim, args["minn"], args["maxn"], max(args["bucket"], 1),
                args["wordNgrams"], mode, args["loss"], nlabels, eos, fasttext_hash(EOS),
            ],
            dtype=np.int64,
        )  # fmt: skip
        self.tables = (
            self.word_bytes, self.word_offsets, self.word_table, self.prune_table,
            self.input, self.output, self.output_norms, left, right, _sigmoid_table(),
        )  # fmt: skip

    # ------------------------------------------------------------------ batch API

    def predict_buffer(self, data: np.ndarray, offsets: np.ndarray):
        """Top-1 (label index, probability) per text of an Arrow-style buffer.

        Each text is read as fastText reads the line handed to `predict`; end it with "\\n" to
        get the `</s>` token fasttext-predict's callers add. Index -1 (probability 0): fastText
        returns no prediction (no row for the text, e.g. empty or only whitespace).
        """
        data = np.ascontiguousarray(data, dtype=np.uint8)
        offsets = np.ascontiguousarray(offsets, dtype=np.int64)
        if offsets.size == 0:
            return np.zeros(0, np.int32), np.zeros(0, np.float32)
        if offsets[0] < 0 or offsets[-1] > data.size or np.any(np.diff(offsets) < 0):
            raise ValueError("offsets must be non-decreasing and within the buffer")
        return _predict_top1(data, offsets, self.params, *self.tables)

    def predict(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Top-1 (label index, probability) per text (each read as one line, see above)."""
        data, offsets = encode_texts(texts)
        return self.predict_buffer(data, offsets)

    def predict_dense(self, texts: list[str], threshold: float = 0.0) -> np.ndarray:
        """(texts, labels) probabilities of every label `predict_threshold` returns (else 0)."""
        data, offsets = encode_texts(texts)
        return _predict_dense(data, offsets, np.float32(threshold), self.params, *self.tables)

    def predict_threshold(self, text: str, threshold: float = 0.0) -> list[tuple[float, str]]:
        """Every (probability, label) fastText's `predict(text, -1, threshold)` returns."""
        data = np.frombuffer(text.encode("utf-8", "surrogatepass"), dtype=np.uint8)
        labels, scores, probs = _predict_all(data, np.float32(threshold), self.params, *self.tables)
        order = np.argsort(-scores, kind="stable")
        return [(float(p), self.labels[i]) for p, i in zip(probs[order], labels[order])]


def encode_texts(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """One UTF-8 buffer + int64 offsets for a list of str (with pyarrow: one pass in C)."""
    try:
        import pyarrow as pa
    except ImportError:
        pa = None
    if pa is not None:
        try:
            array = pa.array(texts, type=pa.large_string())
        except (pa.ArrowException, UnicodeError):  # e.g. lone surrogates: encode below
            array = None
        if array is not None and array.null_count == 0:
            _validity, offsets, values = array.buffers()
            offsets = np.frombuffer(offsets, dtype=np.int64)
            offsets = offsets[array.offset : array.offset + len(texts) + 1]
            if values is None:
                return np.zeros(0, np.uint8), offsets
            return np.frombuffer(values, dtype=np.uint8), offsets
    encoded = [text.encode("utf-8", "surrogatepass") for text in texts]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(e) for e in encoded], out=offsets[1:])
    return np.frombuffer(b"".join(encoded), dtype=np.uint8), offsets


# ---------------------------------------------------------------------- numba kernels

_FNV_BASIS = 2166136261
_FNV_PRIME = 16777619
_MASK32 = 0xFFFFFFFF


@njit(cache=True, nogil=True)
def _word_table(word_bytes, word_offsets):
    """Hash table from a word's bytes (fastText's hash) to its dictionary entry."""
    n = word_offsets.size - 1
    hashes = np.empty(n, dtype=np.uint64)
    for entry in range(n):
        h = np.uint64(_FNV_BASIS)
        for k in range(word_offsets[entry], word_offsets[entry + 1]):
            h = _fnv(h, word_bytes[k])
        hashes[entry] = h
    return key_table.build(hashes)


@njit(cache=True, nogil=True, inline="always")
def _prune_slot(bucket_id, mask):
    return (((bucket_id * 2654435761) & 0xFFFFFFFF) >> 7) & mask


@njit(cache=True, nogil=True)
def _prune_table(keys, rows):
    """Open addressing from n-gram bucket to pruned row: (bucket, row) pairs; -1 = empty."""
    size = 1
    while size < 2 * keys.size + 2:
        size *= 2
    table = np.full((size, 2), -1, dtype=np.int32)
    mask = size - 1
    for i in range(keys.size):
        slot = _prune_slot(np.int64(keys[i]), mask)
        while table[slot, 0] >= 0:
            slot = (slot + 1) & mask
        table[slot, 0] = keys[i]
        table[slot, 1] = rows[i]
    return table


@njit(cache=True, nogil=True, inline="always")
def _fnv(h, byte):
    extended = np.uint64(byte) | np.uint64(0xFFFFFF00) if byte >= 128 else np.uint64(byte)
    return ((h ^ extended) * np.uint64(_FNV_PRIME)) & np.uint64(_MASK32)


@njit(cache=True, nogil=True, inline="always")
def _is_space(byte):
    return (
        byte == 32
        or byte == 10
        or byte == 13
        or byte == 9
        or byte == 11
        or byte == 12
        or (byte == 0)
    )


@njit(cache=True, nogil=True, inline="always")
def _ngram_row(bucket_id, nwords, mode, prune_table):
    """fastText's pushHash: the input row of an n-gram bucket, or -1 when pruned away."""
    if mode == PRUNE_IDENTITY:
        return nwords + bucket_id
    if mode == PRUNE_NONE:
        return -1
    mask = prune_table.shape[0] - 1
    slot = _prune_slot(bucket_id, mask)
    while True:
        key = prune_table[slot, 0]
        if key == bucket_id:
            return nwords + prune_table[slot, 1]
        if key < 0:
            return -1
        slot = (slot + 1) & mask


@njit(cache=True, nogil=True, inline="always")
def _add_row(hidden, matrix, row):
    for d in range(hidden.size):
        hidden[d] += matrix[row, d]


@njit(cache=True, nogil=True)
def _hidden(data, start, end, params, word_bytes, word_offsets, word_table, prune_table,
            matrix, hidden, word_hashes, scratch):  # fmt: skip
    """Sum one line's input rows into `hidden` (zeroed here), in fastText's order; the row
    count. `scratch` must hold end - start + 2 bytes and `word_hashes` end - start + 1."""
    nwords, minn, maxn, bucket = params[0], params[2], params[3], np.uint64(params[4])
    word_ngrams, mode, eos_id, eos_hash = params[5], params[6], params[9], params[10]
    hidden[:] = 0
    nrows = 0
    nhashes = 0
    i = start
    while True:
        while i < end and data[i] != 10 and _is_space(data[i]):
            i += 1
        if i >= end:
            break
        if data[i] == 10:  # the line's newline: the </s> token, and the line is over
            wid = eos_id
            h = np.uint64(eos_hash)
            is_eos = True
        else:
            j = i
            while j < end and not _is_space(data[j]):
                j += 1
            length = j - i
            is_eos = (
                length == 4
                and data[i] == 60 and data[i + 1] == 47 and data[i + 2] == 115 and data[i + 3] == 62
            )  # fmt: skip
            h = np.uint64(_FNV_BASIS)
            for k in range(i, j):
                h = _fnv(h, data[k])
            wid = key_table.find(data, i, j, h, word_table, word_bytes, word_offsets)
            if wid >= nwords or (wid < 0 and length >= 9 and _has_label_prefix(data, i)):
                i = j  # a label token: not an input of prediction
                continue
            if wid >= 0:
                _add_row(hidden, matrix, wid)
                nrows += 1
            if maxn > 0 and mode != PRUNE_NONE and not is_eos:  # char n-grams of "<word>"
                scratch[0] = 60
                for k in range(length):
                    scratch[k + 1] = data[i + k]
                scratch[length + 1] = 62
                nrows += _add_char_ngrams(scratch, length + 2, minn, maxn, bucket, nwords,
                                          mode, prune_table, matrix, hidden)  # fmt: skip
            i = j
            wid = -1  # added above
        if wid >= 0:
            _add_row(hidden, matrix, wid)
            nrows += 1
        word_hashes[nhashes] = np.int64(np.int32(np.uint32(h)))  # fastText keeps them as int32
        nhashes += 1
        if is_eos:
            break
    if word_ngrams > 1 and mode != PRUNE_NONE:
        for a in range(nhashes):
            g = np.uint64(word_hashes[a])  # sign-extended, as fastText's uint64_t(int32_t)
            for b in range(a + 1, min(nhashes, a + word_ngrams)):
                g = g * np.uint64(116049371) + np.uint64(word_hashes[b])
                row = _ngram_row(np.int64(g % bucket), nwords, mode, prune_table)
                if row >= 0:
                    _add_row(hidden, matrix, row)
                    nrows += 1
    return nrows


@njit(cache=True, nogil=True, inline="always")
def _has_label_prefix(data, i):
    return (
        data[i] == 95 and data[i + 1] == 95 and data[i + 2] == 108 and data[i + 3] == 97
        and data[i + 4] == 98 and data[i + 5] == 101 and data[i + 6] == 108
        and data[i + 7] == 95 and data[i + 8] == 95
    )  # fmt: skip


@njit(cache=True, nogil=True)
def _add_char_ngrams(word, length, minn, maxn, bucket, nwords, mode, prune_table, matrix, hidden):
    added = 0
    for i in range(length):
        if (word[i] & 0xC0) == 0x80:
            continue
        h = np.uint64(_FNV_BASIS)
        j = i
        n = 1
        while j < length and n <= maxn:
            h = _fnv(h, word[j])
            j += 1
            while j < length and (word[j] & 0xC0) == 0x80:
                h = _fnv(h, word[j])
                j += 1
            if n >= minn and not (n == 1 and (i == 0 or j == length)):
                row = _ngram_row(np.int64(h % bucket), nwords, mode, prune_table)
                if row >= 0:
                    _add_row(hidden, matrix, row)
                    added += 1
            n += 1
    return added


@njit(cache=True, nogil=True, inline="always")
def _std_log(x):
    """fastText's std_log: log(x + 1e-5) in double, stored as float32."""
    return np.float32(math.log(np.float64(x) + 1e-5))


@njit(cache=True, nogil=True, inline="always")
def _dot(output, norms, row, hidden):
    d = np.float32(0.0)
    for j in range(hidden.size):
        d += output[row, j] * hidden[j]
    return d * norms[row]


@njit(cache=True, nogil=True)
def _label_scores(hidden, loss, output, norms, sigmoid_table, scores):
    """Softmax / one-vs-all probabilities of every label (fastText's computeOutput)."""
    n = scores.size
    for i in range(n):
        scores[i] = _dot(output, norms, i, hidden)
    if loss == LOSS_SOFTMAX:
        top = scores[0]
        for i in range(n):
            top = max(top, scores[i])
        z = np.float32(0.0)
        for i in range(n):
            scores[i] = np.float32(math.exp(np.float64(scores[i] - top)))
            z += scores[i]
        for i in range(n):
            scores[i] = scores[i] / z
    else:
        for i in range(n):
            x = scores[i]
            if x < np.float32(-8.0):
                scores[i] = np.float32(0.0)
            elif x > np.float32(8.0):
                scores[i] = np.float32(1.0)
            else:
                k = np.int64((x + np.float32(8.0)) * np.float32(512.0) / np.float32(8.0)
                             / np.float32(2.0))  # fmt: skip
                scores[i] = sigmoid_table[k]


@njit(cache=True, nogil=True)
def _hs_search(hidden, threshold, k, output, norms, left, right, stack_nodes, stack_scores,
               found_labels, found_scores):  # fmt: skip
    """fastText's hierarchical-softmax dfs (left child first, same pruning), as a loop.

    Keeps the k best leaves (k = 1: the best, a later tie wins as in fastText's heap); with
    k >= number of labels, every leaf whose path score stays >= std_log(threshold)."""
    osz = output.shape[0]
    log_threshold = _std_log(threshold)
    nfound = 0
    top = 1
    stack_nodes[0] = 2 * osz - 2
    stack_scores[0] = np.float32(0.0)
    while top > 0:
        top -= 1
        node = stack_nodes[top]
        score = stack_scores[top]
        if score < log_threshold:
            continue
        if k == 1 and nfound == 1 and score < found_scores[0]:
            continue
        if left[node] == -1 and right[node] == -1:
            if k == 1:
                found_labels[0] = node
                found_scores[0] = score
                nfound = 1
            else:
                found_labels[nfound] = node
                found_scores[nfound] = score
                nfound += 1
            continue
        f = _dot(output, norms, node - osz, hidden)
        f = np.float32(1.0 / np.float64(np.float32(1.0) + np.exp(-f)))
        stack_nodes[top] = right[node]  # popped after the whole left subtree
        stack_scores[top] = score + _std_log(f)
        stack_nodes[top + 1] = left[node]
        stack_scores[top + 1] = score + _std_log(np.float32(1.0 - np.float64(f)))
        top += 2
    return nfound


@njit(cache=True, nogil=True)
def _predict_top1(data, offsets, params, word_bytes, word_offsets, word_table, prune_table,
                  matrix, output, norms, left, right, sigmoid_table):  # fmt: skip
    n = offsets.size - 1
    dim, loss, nlabels = params[1], params[7], params[8]
    labels = np.full(n, -1, dtype=np.int32)
    probs = np.zeros(n, dtype=np.float32)
    hidden = np.zeros(dim, dtype=np.float32)
    scores = np.zeros(nlabels, dtype=np.float32)
    stack_nodes = np.zeros(2 * nlabels + 2, dtype=np.int32)
    stack_scores = np.zeros(2 * nlabels + 2, dtype=np.float32)
    found_labels = np.zeros(1, dtype=np.int32)
    found_scores = np.zeros(1, dtype=np.float32)
    scratch = np.zeros(256, dtype=np.uint8)
    word_hashes = np.zeros(256, dtype=np.int64)
    for t in range(n):
        start, end = offsets[t], offsets[t + 1]
        if scratch.size < end - start + 2:
            scratch = np.zeros(2 * (end - start) + 2, dtype=np.uint8)
            word_hashes = np.zeros(2 * (end - start) + 2, dtype=np.int64)
        nrows = _hidden(data, start, end, params, word_bytes, word_offsets, word_table,
                        prune_table, matrix, hidden, word_hashes, scratch)  # fmt: skip
        if nrows == 0 or nlabels == 0:
            continue
        scale = np.float32(1.0 / nrows)
        for d in range(dim):
            hidden[d] = hidden[d] * scale
        if loss == LOSS_HS:
            if _hs_search(hidden, np.float32(0.0), 1, output, norms, left, right, stack_nodes,
                          stack_scores, found_labels, found_scores) == 0:  # fmt: skip
                continue
            best, best_score = found_labels[0], found_scores[0]
        else:
            _label_scores(hidden, loss, output, norms, sigmoid_table, scores)
            best, best_score = -1, np.float32(0.0)
            for i in range(nlabels):
                if scores[i] < np.float32(0.0):
                    continue
                s = _std_log(scores[i])
                if best >= 0 and s < best_score:
                    continue
                best, best_score = i, s
            if best < 0:
                continue
        labels[t] = best
        probs[t] = np.exp(best_score)
    return labels, probs


@njit(cache=True, nogil=True)
def _predict_all(data, threshold, params, word_bytes, word_offsets, word_table, prune_table,
                 matrix, output, norms, left, right, sigmoid_table):  # fmt: skip
    """(label indices, log scores) fastText's predict(line, -1, threshold) returns, unsorted."""
    dim, loss, nlabels = params[1], params[7], params[8]
    found_labels = np.zeros(nlabels, dtype=np.int32)
    found_scores = np.zeros(nlabels, dtype=np.float32)
    hidden = np.zeros(dim, dtype=np.float32)
    scratch = np.zeros(data.size + 2, dtype=np.uint8)
    word_hashes = np.zeros(data.size + 2, dtype=np.int64)
    nrows = _hidden(data, 0, data.size, params, word_bytes, word_offsets, word_table,
                    prune_table, matrix, hidden, word_hashes, scratch)  # fmt: skip
    if nrows == 0 or nlabels == 0:
        return found_labels[:0], found_scores[:0], found_scores[:0]
    scale = np.float32(1.0 / nrows)
    for d in range(dim):
        hidden[d] = hidden[d] * scale
    if loss == LOSS_HS:
        stack_nodes = np.zeros(2 * nlabels + 2, dtype=np.int32)
        stack_scores = np.zeros(2 * nlabels + 2, dtype=np.float32)
        nfound = _hs_search(hidden, threshold, nlabels, output, norms, left, right, stack_nodes,
                            stack_scores, found_labels, found_scores)  # fmt: skip
        return found_labels[:nfound], found_scores[:nfound], _exp(found_scores[:nfound])
    scores = np.zeros(nlabels, dtype=np.float32)
    _label_scores(hidden, loss, output, norms, sigmoid_table, scores)
    nfound = 0
    for i in range(nlabels):
        if scores[i] >= threshold:
            found_labels[nfound] = i
            found_scores[nfound] = _std_log(scores[i])
            nfound += 1
    return found_labels[:nfound], found_scores[:nfound], _exp(found_scores[:nfound])


@njit(cache=True, nogil=True)
def _predict_dense(data, offsets, threshold, params, word_bytes, word_offsets, word_table,
                   prune_table, matrix, output, norms, left, right, sigmoid_table):  # fmt: skip
    probs = np.zeros((offsets.size - 1, params[8]), dtype=np.float32)
    for t in range(offsets.size - 1):
        labels, _scores, found = _predict_all(
            data[offsets[t] : offsets[t + 1]], threshold, params, word_bytes, word_offsets,
            word_table, prune_table, matrix, output, norms, left, right, sigmoid_table,
        )  # fmt: skip
        for i in range(labels.size):
            probs[t, labels[i]] = found[i]
    return probs


@njit(cache=True, nogil=True)
def _exp(scores):
    probs = np.empty_like(scores)
    for i in range(scores.size):
        probs[i] = np.exp(scores[i])  # float32 exp, as fastText's std::exp(float)
    return probs
