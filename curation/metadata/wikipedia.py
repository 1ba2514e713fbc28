"""Streaming reader for MediaWiki `pages-articles` XML dumps, and per-file n-gram counting.

A dump is read as one stream (bz2/xz/gz decompressed on the fly) with `iterparse`; each page is
released once read, so memory stays flat whatever the dump size. A dump that ends early (cut
mid-page, mid-UTF-8 character or mid-compressed-block) yields every complete page before the cut
and a warning.
"""

from __future__ import annotations

import lzma
import re
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import mwparserfromhell
from mwparserfromhell.nodes import Wikilink

from curation.core.uris import open_decompressed
from curation.metadata.segment import SEGMENTERS

DUMP_NAME = re.compile(r"(?:^|/)([a-z][a-z0-9_]*?)wiki-[^/]*\.xml(?:\.\w+)?$")
# Dump database names that differ from the Wikipedia code used for metadata.
DBNAME_TO_CODE = {"be_x_old": "be_tarask"}
ARTICLE_NAMESPACE = 0


@dataclass(frozen=True)
class Page:
    title: str
    ns: int
    redirect: bool
    text: str


def dump_language(uri: str) -> str | None:
    """`elwiki-20240101-pages-articles1.xml.bz2` -> `el`; None when the name is not a dump's."""
    match = DUMP_NAME.search(uri)
    if not match:
        return None
    return DBNAME_TO_CODE.get(match.group(1), match.group(1))


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def iter_pages(
    stream,
    warn: Callable[[str], None] = print,
    name: str = "dump",
    namespaces: set[str] | None = None,
) -> Iterator[Page]:
    """Every complete `<page>` of a dump stream, in order.

    `namespaces`, when given, receives the dump's namespace names (siteinfo) before any page.
    """
    pages = 0
    root = None
    try:
        for event, element in ET.iterparse(stream, events=("start", "end")):
            if root is None:
                root = element
            if event != "end":
                continue
            tag = _local(element.tag)
            if tag == "namespace" and namespaces is not None and element.text:
                namespaces.add(element.text.strip().lower())
            if tag != "page":
                continue
            fields = {_local(child.tag): child for child in element}
            revision = fields.get("revision")
            text_element = None
            if revision is not None:
                text_element = next((c for c in revision if _local(c.tag) == "text"), None)
            pages += 1
            yield Page(
                title=(fields["title"].text or "") if "title" in fields else "",
                ns=int(fields["ns"].text) if "ns" in fields else ARTICLE_NAMESPACE,
                redirect="redirect" in fields,
                text=(text_element.text or "") if text_element is not None else "",
            )
            root.clear()  # drop the pages read so far
    except (ET.ParseError, EOFError, lzma.LZMAError, OSError) as error:
        warn(f"{name}: dump ends early after {pages} complete pages ({error}); kept those pages")


@dataclass
class PageText:
    plain: str
    links: list[str]


def normalize_title(title: str) -> str:
    """MediaWiki title form: `_` as space, one space, no fragment, first letter upper-cased."""
    title = " ".join(title.split("#", 1)[0].replace("_", " ").split())
    return title[:1].upper() + title[1:]


# Canonical namespaces every wiki accepts besides its localized names, and interwiki prefixes.
CANONICAL_NAMESPACES = frozenset({"file", "image", "media", "category", "template", "wikipedia"})
_INTERWIKI = re.compile(r"^[a-z]{2,3}(?:[-_][a-z]+)*$")


def _is_namespaced(title: str, namespaces: frozenset[str] | set[str]) -> bool:
    """Links to files, categories, other namespaces or other wikis: not article text."""
    prefix, colon, _ = title.lstrip(":").partition(":")
    if not colon:
        return False
    prefix = prefix.strip().lower()
    return prefix in namespaces or prefix in CANONICAL_NAMESPACES or bool(_INTERWIKI.match(prefix))


def parse_page(text: str, namespaces: frozenset[str] | set[str] = frozenset()) -> PageText:
    """Plain text (markup stripped by mwparserfromhell) and the targets of the page's links.

    File/category/interwiki links are removed before stripping: their captions and options
    ("thumb", "200px") and category names are not running text.
    """
    code = mwparserfromhell.parse(text)
    links = []
    for link in code.filter_wikilinks():  # also inside templates and captions
        title = str(link.title)
        if not _is_namespaced(title, namespaces) and (target := normalize_title(title)):
            links.append(target)
    code.nodes[:] = [
        node
        for node in code.nodes
        if not (isinstance(node, Wikilink) and _is_namespaced(str(node.title), namespaces))
    ]
    return PageText(plain=code.strip_code(normalize=True, collapse=True), links=links)


# Row kinds emitted by `count_dump`: (kind, key1, key2, count)
UNIGRAM, BIGRAM, TITLE, INLINK, TOKENS, PAGES, WARNING = "u", "b", "t", "l", "n", "p", "w"


def count_dump(
    uri: str, segmentation: str, flush_keys: int = 2_000_000
) -> Iterator[tuple[str, str, str, int]]:
    """Count rows of one dump file: unigrams, bigrams, article titles, in-links, totals, warnings.

    Counters are flushed whenever they exceed `flush_keys` keys, so a multi-GB dump never holds
    all its bigrams in memory; the rows are summed by key downstream.
    """
    segment = SEGMENTERS[segmentation]
    warnings: list[str] = []
    unigrams: Counter[str] = Counter()
    bigrams: Counter[tuple[str, str]] = Counter()
    links: Counter[str] = Counter()
    tokens = pages = 0

    def flush():
        yield from ((UNIGRAM, w, "", c) for w, c in unigrams.items())
        yield from ((BIGRAM, a, b, c) for (a, b), c in bigrams.items())
        yield from ((INLINK, t, "", c) for t, c in links.items())
        unigrams.clear()
        bigrams.clear()
        links.clear()

    namespaces: set[str] = set()
    with open_decompressed(uri) as stream:
        for page in iter_pages(stream, warnings.append, uri, namespaces):
            if page.ns != ARTICLE_NAMESPACE:
                continue
            pages += 1
            try:
                parsed = parse_page(page.text, namespaces)
            except Exception as error:  # one unparsable page must not lose the file
                warnings.append(f"{uri}: page {page.title!r} skipped: {error}")
                continue
            links.update(parsed.links)
            if page.redirect:
                continue
            yield (TITLE, normalize_title(page.title), "", 1)
            for words in segment(parsed.plain):
                tokens += len(words)
                unigrams.update(words)
                bigrams.update(zip(words, words[1:]))
            if len(unigrams) + len(bigrams) > flush_keys:
                yield from flush()
    yield from flush()
    yield (TOKENS, "", "", tokens)
    yield (PAGES, "", "", pages)
    for message in warnings:
        yield (WARNING, message, "", 0)
