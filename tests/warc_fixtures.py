"""WARC and WAT records written as Common Crawl writes them, for the extraction tests and
benchmarks/bench_alt_text.py (which rebuilds a real capture's WAT record)."""

from __future__ import annotations

import gzip
import json


def warc_record(warc_type: str, uri: str | None, block: bytes, extra: str = "") -> bytes:
    headers = f"WARC/1.0\r\nWARC-Type: {warc_type}\r\n"
    if uri:
        headers += f"WARC-Target-URI: {uri}\r\n"
    headers += f"{extra}Content-Length: {len(block)}\r\n\r\n"
    return headers.encode() + block + b"\r\n\r\n"


def gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def wat_record(
    page: str,
    links: list[dict],
    content_language: str | None = None,
    *,
    headers: dict | None = None,
    head: dict | None = None,
    status: str = "200",
    offset: str = "0",
    **http_fields: str,
) -> bytes:
    """A WAT metadata record of a response (uncompressed): the envelope, the HTTP response's
    status and `headers` (default: an HTML content type, plus `content_language`), any other
    HTTP-Response-Metadata fields, and HTML-Metadata with `head` and `links`."""
    headers = dict(headers or {"Content-Type": "text/html; charset=UTF-8"})
    if content_language:
        headers["Content-Language"] = content_language
    envelope = {
        "Format": "WARC",
        "WARC-Header-Length": "500",
        "WARC-Header-Metadata": {"WARC-Type": "response", "WARC-Target-URI": page},
        "Payload-Metadata": {
            "Actual-Content-Type": "application/http; msgtype=response",
            "HTTP-Response-Metadata": {
                "Response-Message": {"Status": status, "Version": "HTTP/1.1", "Reason": "OK"},
                "Headers": headers,
                **http_fields,
                "HTML-Metadata": {
                    "Head": head or {"Title": "t", "Metas": [], "Link": []},
                    "Links": links,
                },
            },
        },
    }
    block = json.dumps({"Container": {"Offset": offset}, "Envelope": envelope}).encode()
    return warc_record("metadata", page, block, extra="Content-Type: application/json\r\n")
