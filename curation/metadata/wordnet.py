"""WordNet lemmas: Princeton data/index files and Open Multilingual Wordnet tab files.

Princeton files come in the Debian layout (/usr/share/wordnet/data.noun, index.noun, ...) or the
NLTK layout (corpora/wordnet/data.noun, ...), optionally gzipped. The data files keep the case of
proper names ("Albert_Einstein"), the index files are lower-cased, so data files win when present.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from curation.core.uris import open_decompressed
from curation.languages import schemas_dir

PARTS_OF_SPEECH = ("noun", "verb", "adj", "adv")
_ADJECTIVE_MARKER = re.compile(r"\((?:a|p|ip)\)$")
OMW_FILE = re.compile(r"wn-data-([a-z]{3})\.tab$")


def _lines(uri: str) -> Iterator[str] | None:
    try:
        stream = open_decompressed(uri)
    except (FileNotFoundError, OSError):
        return None
    return io.TextIOWrapper(stream, encoding="utf-8", errors="replace")


def _open_first(directory: str, names: Iterable[str]):
    for name in names:
        lines = _lines(f"{directory.rstrip('/')}/{name}")
        if lines is not None:
            return lines
    return None


def data_lemmas(lines: Iterable[str]) -> Iterator[str]:
    """Lemmas of a data.<pos> file: `offset lex_filenum ss_type w_cnt(hex) word lex_id ...`."""
    for line in lines:
        if line.startswith(" ") or not line.strip():
            continue  # license header
        fields = line.split(" ")
        count = int(fields[3], 16)
        for i in range(count):
            yield _ADJECTIVE_MARKER.sub("", fields[4 + 2 * i]).replace("_", " ")


def index_lemmas(lines: Iterable[str]) -> Iterator[str]:
    """Lemmas of an index.<pos> file: one lemma per line, first field."""
    for line in lines:
        if line.startswith(" ") or not line.strip():
            continue
        yield line.split(" ", 1)[0].replace("_", " ")


def princeton_lemmas(directory: str) -> list[str]:
    """Distinct lemmas of every part of speech in a WordNet directory, in code-point order."""
    lemmas: set[str] = set()
    found = False
    for pos in PARTS_OF_SPEECH:
        lines = _open_first(directory, (f"data.{pos}", f"data.{pos}.gz"))
        reader = data_lemmas
        if lines is None:
            lines = _open_first(directory, (f"index.{pos}", f"index.{pos}.gz"))
            reader = index_lemmas
        if lines is None:
            continue
        found = True
        with lines:
            lemmas.update(reader(lines))
    if not found:
        raise FileNotFoundError(f"no WordNet data.* or index.* files in {directory}")
    return sorted(lemmas)


def omw_lemmas(lines: Iterable[str]) -> list[str]:
    """Distinct lemmas of an OMW `wn-data-<iso>.tab` file (`synset<TAB>type<TAB>lemma`)."""
    lemmas = set()
    for line in lines:
        if line.startswith("#"):
            continue
        fields = line.rstrip("\n").split("\t")
        if len(fields) >= 3 and fields[1].endswith("lemma"):
            lemmas.add(fields[2].replace("_", " "))
    return sorted(lemmas)


def omw_file_language(uri: str) -> str | None:
    """The ISO 639-3 code in an OMW file name, or None for other files."""
    match = OMW_FILE.search(uri)
    return match.group(1) if match else None


def load_omw_table(path: Path | None = None) -> dict[str, str]:
    """ISO 639-3 (as used in OMW file names) -> Wikipedia language code."""
    path = path if path is not None else schemas_dir() / "omw_iso639_3.csv"
    with path.open(encoding="utf-8") as f:
        return {row["iso639_3"]: row["wiki_code"] for row in csv.DictReader(f)}
