"""`--block-hashes` and `--block-urls`: what must never be trained on, whatever else it is.

A hash list holds one hash a line (`#` starts a comment): 32 hex digits are an MD5 of the stored
bytes, 64 are a SHA-256 of them or a PDQ hash (the two cannot be told apart by their form, so
such a line is matched both ways: a SHA-256 read as a PDQ hash is a random 256-bit vector, which
lands within 31 bits of an image's hash with probability below 1e-30). `md5:`, `sha256:` and
`pdq:` prefixes pin the kind. A URL list holds exact URLs (compared after the normalisation of
docs/semantics.md section 5) or bare domains, which also block their subdomains.
"""

from __future__ import annotations

import dataclasses
import re
from urllib.parse import urlsplit

import numpy as np

from curation.core.jobs import FilterError
from curation.core.uris import open_binary
from curation.identity import normalize_url
from curation.image_filter import hashes

_HEX = re.compile(r"^[0-9a-f]+$")


@dataclasses.dataclass(frozen=True)
class HashList:
    md5: frozenset[str] = frozenset()
    sha256: frozenset[str] = frozenset()
    pdq: tuple[str, ...] = ()

    def pdq_words(self) -> np.ndarray:
        return hashes.hex_to_words(list(self.pdq))


@dataclasses.dataclass(frozen=True)
class UrlList:
    urls: frozenset[str] = frozenset()
    domains: frozenset[str] = frozenset()

    def reason(self, url: str | None) -> str | None:
        """blocked_url, blocked_domain or None."""
        if not url:
            return None
        try:
            normalized = normalize_url(url)
        except ValueError:
            return None
        if normalized in self.urls:
            return "blocked_url"
        host = (urlsplit(normalized).hostname or "").rstrip(".")
        labels = host.split(".")
        for i in range(len(labels)):
            if ".".join(labels[i:]) in self.domains:
                return "blocked_domain"
        return None


def read_hash_list(uri: str) -> HashList:
    md5, sha256, pdq = set(), set(), []
    for number, line in _lines(uri):
        kind, _, value = line.rpartition(":")
        value = value.strip().lower()
        kind = kind.strip().lower() or {32: "md5", 64: "sha256|pdq"}.get(len(value), "")
        if (
            not _HEX.match(value)
            or kind not in ("md5", "sha256", "pdq", "sha256|pdq")
            or len(value) != (32 if kind == "md5" else 64)
        ):
            raise FilterError(
                f"{uri}, line {number}: not an MD5 (32 hex digits), SHA-256 or PDQ hash "
                f"(64 hex digits): {line[:80]!r}"
            )
        if kind == "md5":
            md5.add(value)
        if "sha256" in kind:
            sha256.add(value)
        if "pdq" in kind:
            pdq.append(value)
    return HashList(frozenset(md5), frozenset(sha256), tuple(sorted(set(pdq))))


def read_url_list(uri: str) -> UrlList:
    urls, domains = set(), set()
    for number, line in _lines(uri):
        if "://" in line:
            try:
                urls.add(normalize_url(line))
            except ValueError as error:
                raise FilterError(f"{uri}, line {number}: {error}") from None
        elif re.fullmatch(r"[A-Za-z0-9.-]+\.?", line) and "." in line.strip("."):
            domains.add(line.lower().rstrip("."))
        else:
            raise FilterError(
                f"{uri}, line {number}: neither an http(s) URL nor a domain: {line[:80]!r}"
            )
    return UrlList(frozenset(urls), frozenset(domains))


def _lines(uri: str):
    try:
        with open_binary(uri) as stream:
            lines = stream.read().decode("utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise FilterError(f"cannot read {uri}: {error}") from None
    for number, line in enumerate(lines, 1):
        line = line.split("#", 1)[0].strip()
        if line:
            yield number, line
