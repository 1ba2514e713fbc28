"""curation.alt_text.fasttext_model gives fasttext-predict's answers: lid.176 on the real
caption samples, edge cases, and small hand-written models for the code paths lid.176 does not use.

No fastText trainer is installed here (fasttext-predict only predicts), so `write_model` writes
a supervised model file by hand, following fastText 0.9.2's binary layout (little endian):

    int32 magic 793712314, int32 version 12
    args: int32 dim, ws, epoch, minCount, neg, wordNgrams, loss (1 hs, 2 ns, 3 softmax, 4 ova),
          model (3 = supervised), bucket, minn, maxn, lrUpdateRate; float64 t
    dictionary: int32 size, nwords, nlabels; int64 ntokens, pruneidx_size (-1: not pruned);
          size x (word bytes, NUL, int64 count, int8 type: 0 word, 1 label), words first;
          pruneidx_size x (int32 bucket, int32 row)
    bool quant_input; input matrix; bool qout; output matrix, where a dense matrix is
          int64 m, int64 n, float32[m*n] and a quantized one is bool qnorm, int64 m, int64 n,
          int32 codesize, uint8 codes[codesize], product quantizer (int32 dim, nsubq, dsub,
          lastdsub, float32 centroids[dim*256]), and with qnorm uint8 norm_codes[m] and a
          1-dim product quantizer for the norms. The output is quantized only with quant_input.

The input matrix has nwords + bucket rows (n-gram rows follow the words), or nwords +
pruneidx_size rows when pruned. Weights are random: the answers are meaningless, but
fasttext-predict and our engine must agree on them.
"""

from __future__ import annotations

import struct

import fasttext
import numpy as np
import pytest

from curation.alt_text.fasttext_model import FastTextModel, encode_texts
from curation.alt_text.lid import default_model_path

HS, NS, SOFTMAX, OVA = 1, 2, 3, 4


@pytest.fixture(scope="module")
def lid176() -> FastTextModel:
    return FastTextModel(default_model_path())


@pytest.fixture(scope="module")
def reference():
    return fasttext.load_model(str(default_model_path())).f


def as_line(text: str) -> str:
    return text.replace("\n", " ").replace("\r", " ") + "\n"


def assert_same_answers(model: FastTextModel, reference, lines: list[str], tolerance=1e-4):
    ids, probs = model.predict(lines)
    worst = 0.0
    for line, i, prob in zip(lines, ids.tolist(), probs.tolist()):
        expected = reference.predict(line, 1, 0.0, "replace")
        if not expected:
            assert i == -1 and prob == 0.0, line
            continue
        assert model.labels[i] == expected[0][1], line
        worst = max(worst, abs(prob - expected[0][0]))
    assert worst <= tolerance
    return worst


def assert_same_label_sets(model, reference, lines, thresholds=(0.0, 0.01, 0.1)):
    for line in lines:
        for threshold in thresholds:
            ours = model.predict_threshold(line, threshold)
            expected = reference.predict(line, -1, threshold, "replace")
            assert {label for _p, label in ours} == {label for _p, label in expected}, line
            ours, expected = dict(map(reversed, ours)), dict(map(reversed, expected))
            assert all(abs(ours[label] - expected[label]) <= 1e-4 for label in expected)


def test_lid176_matches_fasttext_predict_on_every_caption(lid176, reference, wit_captions,
                                                          cc3m_captions):  # fmt: skip
    texts = [text for captions in wit_captions.values() for text in captions] + cc3m_captions
    lines = list(dict.fromkeys(as_line(text) for text in texts))
    assert len(lines) > 18000  # all 11 WIT languages + CC3M, distinct
    assert_same_answers(lid176, reference, lines)
    assert_same_label_sets(lid176, reference, lines[::60])


EDGE_CASES = [
    "",
    " ",
    " \t\v\f\r ",
    "\n",
    "\n\nhello",
    "no newline at the end",
    "first line\nsecond line is not read\n",
    "a\0b\0c\n",
    "thumbs up 👍🏽 and 🇩🇰 flags\n",
    "東京タワーの夜景と富士山\n",
    "서울의 밤\n",
    "__label__en is a label token, skipped\n",
    "__label__\n",
    "end </s> tokens after this are ignored\n",
    "ÀÉÎÕÜ çà et là\n",
    "x" * 100_000 + "\n",
    ("mot " * 25_000) + "\n",
]


def test_edge_cases_match_fasttext_predict(lid176, reference):
    assert_same_answers(lid176, reference, EDGE_CASES)
    assert_same_label_sets(lid176, reference, EDGE_CASES)
    ids, probs = lid176.predict(["", "   "])
    assert ids.tolist() == [-1, -1] and probs.tolist() == [0.0, 0.0]


def test_buffer_input_and_invalid_utf8(lid176):
    lines = ["hello world\n", "", "bonjour le monde\n"]
    data, offsets = encode_texts(lines)
    assert offsets.tolist() == [0, 12, 12, 29]
    assert lid176.predict_buffer(data, offsets)[0].tolist() == lid176.predict(lines)[0].tolist()
    # raw bytes that are not UTF-8 are hashed byte by byte, like fastText's std::string
    raw = np.frombuffer(b"\xff\xfe caf\xe9 ok\n", dtype=np.uint8)
    ids, _probs = lid176.predict_buffer(raw, np.array([0, raw.size]))
    assert 0 <= ids[0] < len(lid176.labels)
    with pytest.raises(ValueError, match="offsets"):
        lid176.predict_buffer(raw, np.array([0, raw.size + 1]))


def test_unreadable_files_raise(tmp_path):
    with pytest.raises(ValueError, match="not a fastText model"):
        FastTextModel(tmp_path.joinpath("empty.bin").open("wb").name)
    truncated = tmp_path / "truncated.ftz"
    truncated.write_bytes(default_model_path().read_bytes()[:500_000])
    with pytest.raises(ValueError, match="truncated"):
        FastTextModel(truncated)


# ------------------------------------------------------------- hand-written models


def _pq(rng, dim: int, dsub: int) -> tuple[bytes, int]:
    nsubq = -(-dim // dsub)
    lastdsub = dim - dsub * (nsubq - 1)
    centroids = rng.normal(0, 0.5, dim * 256).astype("<f4")
    return struct.pack("<iiii", dim, nsubq, dsub, lastdsub) + centroids.tobytes(), nsubq


def _matrix(rng, m: int, n: int, quantized: bool, qnorm: bool) -> bytes:
    if not quantized:
        return struct.pack("<qq", m, n) + rng.normal(0, 0.5, (m, n)).astype("<f4").tobytes()
    pq, nsubq = _pq(rng, n, dsub=3)  # 3 does not divide dim 8: a shorter last sub-vector
    codes = rng.integers(0, 256, m * nsubq, dtype=np.uint8)
    out = struct.pack("<?qqi", qnorm, m, n, codes.size) + codes.tobytes() + pq
    if qnorm:
        norm_pq, _ = _pq(rng, 1, dsub=1)
        out += rng.integers(0, 256, m, dtype=np.uint8).tobytes() + norm_pq
    return out


def write_model(path, loss: int, word_ngrams=2, quantized=False, pruned=False, minn=2, maxn=4):
    rng = np.random.default_rng(0)
    dim, bucket = 8, 5000
    words = [b"</s>", b"the", b"de", b"la", b"und", b"\xe6\x9d\xb1\xe4\xba\xac", b"and", b"of"]
    labels = [b"__label__en", b"__label__fr", b"__label__de", b"__label__ja", b"__label__x\xff"]
    counts = [1000 - 10 * i for i in range(len(words))] + [500, 300, 200, 100, 50]
    pruneidx = {}
    if pruned:  # keep a random fifth of the n-gram buckets, in a shuffled row order
        kept = rng.choice(bucket, bucket // 5, replace=False)
        pruneidx = {int(b): row for row, b in enumerate(kept)}
    args = struct.pack("<12id", dim, 5, 5, 1, 5, word_ngrams, loss, 3, bucket, minn, maxn, 100,
                       1e-4)  # fmt: skip
    dictionary = struct.pack(
        "<iiiqq", len(words) + len(labels), len(words), len(labels), 10**6,
        len(pruneidx) if pruned else -1,
    )  # fmt: skip
    for i, entry in enumerate(words + labels):
        dictionary += entry + b"\0" + struct.pack("<qb", counts[i], int(i >= len(words)))
    for key, row in pruneidx.items():
        dictionary += struct.pack("<ii", key, row)
    rows = len(words) + (len(pruneidx) if pruned else bucket)
    body = struct.pack("<?", quantized) + _matrix(rng, rows, dim, quantized, qnorm=quantized)
    body += struct.pack("<?", quantized) + _matrix(rng, len(labels), dim, quantized, quantized)
    path.write_bytes(struct.pack("<ii", 793712314, 12) + args + dictionary + body)
    return path


HAND_WRITTEN = {
    "softmax, dense .bin, word bigrams": dict(loss=SOFTMAX),
    "softmax, unigrams only": dict(loss=SOFTMAX, word_ngrams=1),
    "softmax, char 1- to 3-grams": dict(loss=SOFTMAX, minn=1, maxn=3),
    "softmax, no char n-grams": dict(loss=SOFTMAX, minn=0, maxn=0),
    "one-vs-all, word trigrams": dict(loss=OVA, word_ngrams=3),
    "negative sampling": dict(loss=NS),
    "hierarchical softmax, dense": dict(loss=HS),
    "hs, quantized input+output with norms, pruned": dict(loss=HS, quantized=True, pruned=True),
    "softmax, quantized, not pruned": dict(loss=SOFTMAX, quantized=True),
}


@pytest.mark.parametrize("name", list(HAND_WRITTEN))
def test_hand_written_models_match_fasttext_predict(name, tmp_path, wit_captions):
    path = write_model(tmp_path / "model.bin", **HAND_WRITTEN[name])
    model = FastTextModel(path)
    reference = fasttext.load_model(str(path)).f
    lines = [as_line(text) for lang in ("en", "ja", "da") for text in wit_captions[lang][:150]]
    lines += EDGE_CASES[:-2] + ["the and of de la und 東京 東京\n", "the\n"]
    assert_same_answers(model, reference, lines)
    assert_same_label_sets(model, reference, lines[::10] + lines[-2:])
    assert model.labels[-1] == "__label__x\ufffd"  # invalid UTF-8 replaced, as asked of fastText
    assert len(set(model.predict(lines)[0].tolist())) > 1  # the weights do decide something
