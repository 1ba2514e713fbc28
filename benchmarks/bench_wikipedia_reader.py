"""Wikipedia dump reader throughput: uncompressed dump MB/s per core (one process = one core).

Measured on the truncated ja/el/uk/vi `pages-articles` samples in ../shared/data/wikipedia, each
stage timed with CPU time of this process:
- raw read (baseline): xz decompression + `iterparse` of every page, nothing else;
- regex strip (baseline): raw read + a regex markup strip (templates, tags, link brackets,
  quotes) + whitespace split + unigram/bigram counts: what a quick script would do;
- ours: `curation.metadata.wikipedia.count_dump`: raw read + mwparserfromhell strip + links (in-link
  counts) + per-language segmentation + unigram/bigram/title counts.

    .venv/bin/python benchmarks/bench_wikipedia_reader.py [--langs el,ja]
"""

from __future__ import annotations

import argparse
import platform
import re
import time
from collections import Counter
from pathlib import Path

from curation.languages import no_space_languages
from curation.metadata.segment import segmenter_name
from curation.metadata.wikipedia import ARTICLE_NAMESPACE, count_dump, iter_pages, open_decompressed

DUMPS = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikipedia"
_TEMPLATE = re.compile(r"\{\{[^{}]*\}\}")
_TAG = re.compile(r"<[^>]+>")
_LINK = re.compile(r"\[\[(?:[^|\]]*\|)?([^\]]*)\]\]")
_QUOTES = re.compile(r"'{2,}")


def raw_read(uri: str) -> int:
    with open_decompressed(uri) as stream:
        return sum(len(page.text) for page in iter_pages(stream, lambda _: None, uri))


def regex_strip(uri: str) -> int:
    unigrams: Counter = Counter()
    bigrams: Counter = Counter()
    with open_decompressed(uri) as stream:
        for page in iter_pages(stream, lambda _: None, uri):
            if page.ns != ARTICLE_NAMESPACE or page.redirect:
                continue
            text = page.text
            for _ in range(3):  # nested templates, innermost first
                text = _TEMPLATE.sub(" ", text)
            text = _QUOTES.sub("", _LINK.sub(r"\1", _TAG.sub(" ", text)))
            words = text.split()
            unigrams.update(words)
            bigrams.update(zip(words, words[1:]))
    return len(unigrams)


def ours(uri: str, segmentation: str) -> int:
    return sum(1 for _ in count_dump(uri, segmentation))


def uncompressed_mb(uri: str) -> float:
    size = 0
    with open_decompressed(uri) as stream:
        try:
            while chunk := stream.read(1 << 20):
                size += len(chunk)
        except EOFError:
            pass
    return size / 1e6


def cpu_seconds(fn, *args) -> float:
    started = time.process_time()
    fn(*args)
    return time.process_time() - started


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--langs", default="el,ja,uk,vi", help="sample dumps to read")
    args = parser.parse_args(argv)
    if not DUMPS.is_dir():
        print(f"skipped: no Wikipedia samples in {DUMPS}")
        return 0
    no_space = no_space_languages()
    print(f"machine: {platform.machine()}, one process (one core), CPU seconds")
    header = ("dump", "MB", "raw MB/s", "regex MB/s", "ours MB/s", "segmenter")
    print("{:6} {:>6} {:>9} {:>11} {:>10} {:>10}".format(*header))
    totals = Counter()
    for lang in args.langs.split(","):
        uri = str(DUMPS / f"{lang}wiki-truncated-100k.xml.xz")
        segmentation = segmenter_name(lang, lang in no_space)
        ours(uri, segmentation)  # warm up: imports, dictionaries
        mb = uncompressed_mb(uri)
        raw = cpu_seconds(raw_read, uri)
        regex = cpu_seconds(regex_strip, uri)
        full = cpu_seconds(ours, uri, segmentation)
        totals.update(mb=mb, raw=raw, regex=regex, full=full)
        print(f"{lang:6} {mb:6.1f} {mb / raw:9.1f} {mb / regex:11.1f} {mb / full:10.2f} "
              f"{segmentation:>10}")  # fmt: skip
    mb = totals["mb"]
    print(
        f"all    {mb:6.1f} {mb / totals['raw']:9.1f} {mb / totals['regex']:11.1f} "
        f"{mb / totals['full']:10.2f}\n"
        f"ours vs regex strip: {totals['regex'] / totals['full']:.2f}x the speed; "
        f"ours vs raw read: {totals['raw'] / totals['full']:.2f}x"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
