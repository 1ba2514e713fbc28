"""Units and identity (docs/semantics.md, section 5): which image a record is about.

An image is its absolute URL, resolved against the page it was found on, fragment dropped,
scheme and host lower-cased; its `uid` is a digest of that URL. Every stage that needs a uid
(extraction, curation of input without one, the tests and benchmarks) computes it here.
"""

from __future__ import annotations

import hashlib
import re
from urllib.parse import urljoin, urlsplit, urlunsplit

_WS_RE = re.compile(r"\s+")


def normalize_url(url: str, page_url: str | None = None) -> str:
    """Absolute URL: resolved against `page_url`, fragment dropped, scheme and host lower-cased.

    Raises ValueError for URLs that cannot be made absolute http(s) URLs.
    """
    url = url.strip()
    if _WS_RE.search(url):
        url = _WS_RE.sub("%20", url)
    if page_url:
        url = urljoin(page_url, url)
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme and scheme not in ("http", "https"):
        raise ValueError(f"not an http(s) URL: {url[:80]!r}")
    if not scheme or not parts.netloc:
        raise ValueError(f"relative URL without a base: {url!r}")
    netloc = parts.netloc.lower()
    default_port = ":80" if scheme == "http" else ":443"
    if netloc.endswith(default_port):
        netloc = netloc[: -len(default_port)]
    return urlunsplit((scheme, netloc, parts.path or "/", parts.query, ""))


def url_uid(normalized_url: str) -> str:
    return hashlib.sha1(normalized_url.encode("utf-8")).hexdigest()[:32]


def image_uid(url: str, page_url: str | None = None) -> str:
    """Stable image id: first 16 bytes (hex) of sha1 of the normalized absolute URL."""
    return url_uid(normalize_url(url, page_url))
