"""The LID second opinion: py3langid scored in batches, the gate, the fusion, the mapping."""

from __future__ import annotations

import csv
import lzma
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from curation.alt_text.lid import PATH_FUSED, PATH_LID176, FastTextLID, model_labels
from curation.alt_text.second_opinion import Py3LangID, load_mapping
from curation.languages import load_languages

CROWD = (
    Path(__file__).resolve().parents[1] / "benchmarks" / "data" / "xflickrco_test_captions.tsv.xz"
)


@pytest.fixture(scope="module")
def crowd() -> dict[str, list[str]]:
    """xFlickr&CO test captions (IGLUE): 2,000 crowd-written descriptions per language."""
    captions = defaultdict(list)
    with lzma.open(CROWD, "rt", encoding="utf-8") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            captions[row["lang"]].append(row["text"])
    return dict(captions)


@pytest.fixture(scope="module")
def alone() -> FastTextLID:
    return FastTextLID(second_opinion="none")


@pytest.fixture(scope="module")
def fused() -> FastTextLID:
    return FastTextLID()


def test_batch_scores_equal_py3langid_rank(crowd, wit_captions):
    import py3langid.langid as langid

    reference = langid.LanguageIdentifier.from_model_file(langid.MODEL_FILE, norm_probs=True)
    texts = [t for lang in sorted(crowd) for t in crowd[lang][:60]]
    texts += [t for lang in sorted(wit_captions) for t in wit_captions[lang][:40]]
    texts += ["", "   ", "PARIS SKYLINE AT NIGHT", "Ćao, kako si?", "e\u0301cole", "x\ud800y"]
    ours = Py3LangID()
    probs = ours.probabilities(texts)
    expected = np.array([[dict(reference.rank(t))[label] for label in ours.labels] for t in texts])
    assert probs.shape == (len(texts), 140) and len(ours.labels) == 140
    np.testing.assert_allclose(probs, expected, atol=1e-4)
    assert (probs.argmax(1) == expected.argmax(1)).all()
    assert np.allclose(probs.sum(1), 1.0, atol=1e-4)


def test_mapping_covers_every_py3langid_label_and_routes_like_lid176(alone):
    rows = load_mapping()
    labels = [row.label for row in rows]
    assert sorted(labels) == sorted(Py3LangID().labels) and len(set(labels)) == len(labels)
    lid_labels, codes = set(model_labels()), {lang.code for lang in load_languages()}
    for row in rows:
        if row.lid176_label is not None:
            assert row.lid176_label in lid_labels
            assert row.wiki_code == alone.route(row.lid176_label)
        else:
            assert not row.gate and not row.answer  # fusion answers are lid.176 labels only
        assert row.wiki_code is None or row.wiki_code in codes
    by_label = {row.label: row for row in rows}
    assert by_label["gug"].lid176_label == "gn"
    assert by_label["no"].wiki_code == "no" and by_label["nn"].wiki_code == "nn"
    assert not by_label["sr"].gate and by_label["sr"].answer
    assert by_label["hr"].gate and by_label["ms"].gate and by_label["zh"].gate
    assert not by_label["wuu"].answer and not by_label["yue"].answer
    assert sum(row.answer for row in rows) == 106 and sum(row.gate for row in rows) == 107


def test_gate_never_touches_confident_answers_or_labels_py3langid_lacks(
    crowd, wit_captions, alone, fused
):
    texts = [t for captions in (*crowd.values(), *wit_captions.values()) for t in captions]
    before = alone.identify(texts)
    after = fused.identify(texts)
    assert after.labels == before.labels and after.scores == before.scores  # raw lid.176 kept
    gated = fused._gated
    untouched = 0
    for i, (label, score) in enumerate(zip(before.labels, before.scores)):
        if score >= fused.gate or label not in gated:
            assert after.langs[i] == before.langs[i] and after.paths[i] == PATH_LID176
            assert after.second_labels[i] is None and after.second_scores[i] is None
            untouched += label not in gated and score < fused.gate
        else:
            assert after.paths[i] == PATH_FUSED and after.second_labels[i] is not None
    assert untouched >= 20  # sr, sh, ceb, war...: lid.176's call stands
    assert 0.1 < after.paths.count(PATH_FUSED) / len(texts) < 0.4


def test_fusion_gains_on_close_pairs_and_costs_no_language_a_point(crowd, alone, fused):
    gains = {}
    for lang, texts in crowd.items():
        before = np.mean([x == lang for x in alone.predict(texts)[2]])
        after = np.mean([x == lang for x in fused.predict(texts)[2]])
        gains[lang] = after - before
    assert gains["id"] > 0.05 and gains["zh"] > 0.05, gains  # id/ms, zh/ja
    assert min(gains.values()) > -0.01, gains


def test_same_text_same_answer_whatever_the_batch(crowd, wit_captions, fused):
    texts = [t for lang in ("id", "zh", "ja") for t in crowd[lang][:150]]
    texts += [t for lang in ("da", "bg", "et") for t in wit_captions[lang][:150]]
    pages = ["da", None, "id", "bg"] * (len(texts) // 4) + [None] * (len(texts) % 4)
    whole = fused.identify(texts, pages)
    order = np.random.default_rng(0).permutation(len(texts))
    for size in (1, 7, 256):
        parts = defaultdict(list)
        for start in range(0, len(texts), size):
            batch = order[start : start + size].tolist()
            result = fused.identify([texts[i] for i in batch], [pages[i] for i in batch])
            for j, i in enumerate(batch):
                parts[i] = (result.langs[j], result.paths[j], result.second_labels[j])
        assert [parts[i] for i in range(len(texts))] == list(
            zip(whole.langs, whole.paths, whole.second_labels)
        ), size


def test_prior_weighs_the_fused_distribution(wit_captions, alone, fused):
    """Danish WIT captions on da.wikipedia: the fusion moves some to no/nn/sv, the page's
    language then wins where its fused probability is within the prior's reach."""
    texts = wit_captions["da"]
    pages = ["da"] * len(texts)
    result = fused.identify(texts, pages, ["wikipedia"] * len(texts))
    with_prior_alone = alone.predict(texts, pages, ["wikipedia"] * len(texts))[2]
    assert "prior" in result.paths
    assert (
        np.mean([x == "da" for x in result.langs])
        >= np.mean([x == "da" for x in with_prior_alone]) - 0.01
    )


def test_options_are_checked():
    with pytest.raises(ValueError, match="second opinion"):
        FastTextLID(second_opinion="lingua")
    with pytest.raises(ValueError, match="within"):
        FastTextLID(gate=1.5)
    assert FastTextLID(second_opinion="none").second_opinion == "none"
    assert FastTextLID().second_opinion == "py3langid"
