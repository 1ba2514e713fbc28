"""Readers for the embedded sample data (a few MB of real captions, WordNet and one WARC)."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path

SAMPLE_DIR = Path(__file__).resolve().parents[1] / "sample_data"
WIT_LANGUAGES = ("ar", "bg", "da", "el", "en", "et", "id", "ja", "ko", "tr", "vi")


def cc3m_pairs(path: Path = SAMPLE_DIR / "cc3m_val_2k.tsv") -> Iterator[tuple[str, str]]:
    """(caption, url) pairs from a CC3M-layout TSV: caption<TAB>url, no header."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            caption, _, url = line.rstrip("\n").partition("\t")
            if caption and url:
                yield caption, url


def wit_rows(lang: str, directory: Path = SAMPLE_DIR / "wit") -> Iterator[dict]:
    with open(directory / f"test_{lang}.jsonl", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def wordnet_lemmas(directory: Path = SAMPLE_DIR / "wordnet") -> list[str]:
    """Distinct lemmas of the WordNet index files, underscores as spaces, sorted."""
    lemmas = set()
    for pos in ("noun", "verb", "adj", "adv"):
        with gzip.open(directory / f"index.{pos}.gz", "rt", encoding="utf-8") as f:
            for line in f:
                if not line.startswith(" "):  # the license header is indented
                    lemmas.add(line.split(" ", 1)[0].replace("_", " "))
    return sorted(lemmas)
