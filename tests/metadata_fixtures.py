"""Tiny hand-countable WordNet files and Wikipedia dumps for the metadata tests."""

from __future__ import annotations

import gzip
from pathlib import Path

HEADER = (
    '<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/" version="0.10" xml:lang="{lang}">'
    "\n  <siteinfo><sitename>Wikipedia</sitename><dbname>{lang}wiki</dbname></siteinfo>\n"
)


def page(title: str, text: str, ns: int = 0, redirect: str | None = None) -> str:
    redirect_tag = f'<redirect title="{redirect}" />' if redirect else ""
    return (
        f"  <page>\n    <title>{title}</title>\n    <ns>{ns}</ns>\n    <id>1</id>\n"
        f"    {redirect_tag}\n    <revision><id>2</id><model>wikitext</model>"
        f'<text bytes="1" xml:space="preserve">{text}</text></revision>\n  </page>\n'
    )


# Articles Alpha, Beta, Delta (its file link and category are not text); Gamma redirects to
# Beta; Talk:Foo is not an article.
# Tokens (segments split at punctuation): [Beta cat dog] [cat dog fish] [cat dog the alpha] [bird]
# -> unigrams cat 3, dog 3, Beta/fish/the/alpha/bird 1 (N = 11); bigram "cat dog" 3 (PMI 11/3).
# In-links: Beta 2 (Alpha, Gamma), Alpha 1 (Beta), Delta 0.
AF_PAGES = [
    page("Alpha", "[[Beta]] cat dog. cat dog fish"),
    page("Beta", "cat dog [[Alpha|the alpha]]"),
    page("Gamma", "#REDIRECT [[Beta]]", redirect="Beta"),
    page("Talk:Foo", "cat cat cat cat cat", ns=1),
    page("Delta", "{{Infobox|x=zzz}} bird [[File:x.jpg|thumb|big cat]][[Category:Birds]]"),
]
# A page cut mid-text, mid-UTF-8 character: its words must not be counted.
AF_CUT = page("Epsilon", "dog dog dog dog ά").encode("utf-8")
AF_CUT = AF_CUT[: AF_CUT.index("ά".encode()) + 1]


def af_dump_bytes(pages: list[str] = AF_PAGES, cut: bytes = AF_CUT) -> bytes:
    text = HEADER.format(lang="af") + "".join(pages)
    return text.encode("utf-8") + cut


def write_wordnet(directory: Path, lemmas: list[str], gz: bool = True) -> Path:
    """An index.noun with a license header, lemmas with `_` for spaces."""
    directory.mkdir(parents=True, exist_ok=True)
    lines = ["  1 This software and database is being provided ...", "  2 WordNet 3.0 license"]
    lines += [f"{lemma.replace(' ', '_')} n 1 1 @ 1 0 00001740" for lemma in lemmas]
    data = ("\n".join(lines) + "\n").encode("utf-8")
    if gz:
        (directory / "index.noun.gz").write_bytes(gzip.compress(data))
    else:
        (directory / "index.noun").write_bytes(data)
    return directory


# en WordNet: 2 kept + non-BMP/full-width entries (ids must follow code points, not UTF-16),
# one pure punctuation entry and one too long.
EN_LEMMAS = ["dog", "hot dog", "ｚebra", "𠀀beast", "--", "x" * 300]
