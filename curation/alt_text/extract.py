"""Alt-text extraction: WARC / WAT / caption tables -> (image URL, page URL, alt text) records.

Every reader takes a binary stream and a `drops` Counter and yields `AltText` records; whatever
it cannot use is counted under a drop reason (`DROP_REASONS`) and reading goes on. WARC files
are read with our own gzip-member reader so that a corrupt or truncated member costs only that
member: Common Crawl writes one gzip member per record, and a whole-file gzip is just one big
member (bounded by `max_member_bytes`).
"""

from __future__ import annotations

import gzip
import html
import json
import re
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from urllib.parse import unquote, urljoin, urlsplit

from curation.core.uris import file_size, is_transient, local_path, open_binary
from curation.identity import normalize_url, url_uid
from curation.languages import language_from_tag, wikipedia_language

DROP_REASONS = {
    # file / container level
    "unreadable_file": "the input could not be opened or read",
    "empty_file": "the input file holds 0 bytes (nothing lost; counted so it is seen)",
    "corrupt_gzip": "a gzip member failed to decompress (bytes skipped up to the next member)",
    "truncated_gzip": "the file ends inside a gzip member",
    "oversized_member": "a gzip member inflates beyond --max-member-bytes",
    "oversized_record": "a WARC record's Content-Length exceeds --max-member-bytes (skipped)",
    "broken_warc_header": "a WARC record header is malformed (skipped to the next record)",
    "truncated_record": "a WARC record is shorter than its Content-Length",
    "bad_json": "a WAT record or JSONL line is not valid JSON",
    "bad_row": "a table row lacks the text or URL column",
    # page level
    "http_status": "HTTP status other than 200",
    "not_html": "response body is not HTML",
    "bad_content_encoding": "Content-Encoding could not be decoded",
    "html_too_large": "HTML body larger than --max-html-bytes",
    "html_parse_error": "the HTML parser rejected the document",
    # image level
    "empty_alt": "<img> without alt text (missing, empty or whitespace)",
    "alt_is_filename": "alt text is only a file name",
    "alt_is_url": "alt text is only a URL",
    "alt_too_long": "alt text longer than --max-alt-chars",
    "invalid_text_encoding": "alt text contains undecodable bytes (U+FFFD)",
    "no_image_url": "no usable src / data-src / srcset",
    "non_http_url": "image URL is not http(s) (data:, javascript:, ...)",
    "relative_url_without_base": "relative image URL and no page URL to resolve it",
    "url_too_long": "image URL longer than 2048 characters",
    "invalid_url_encoding": "image URL contains undecodable bytes (U+FFFD)",
    # dataset level (counted by the job)
    "duplicate": "exact (uid, text) duplicate of an earlier record",
}

GZIP_MAGIC = b"\x1f\x8b\x08"
MAX_URL_CHARS = 2048
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "gif", "webp", "svg", "bmp", "tif", "tiff", "ico")
IMAGE_EXTENSIONS += ("avif", "heic", "jfif")
_FILENAME_RE = re.compile(r"^[^\s/]+\.(?:" + "|".join(IMAGE_EXTENSIONS) + r")$", re.IGNORECASE)
_URL_RE = re.compile(r"^(?:(?:https?|ftp):)?//\S+$|^www\.\S+$", re.IGNORECASE)
_CAMERA_NAME_RE = re.compile(r"^(?:img|dsc|dscn|dscf|dcim|pict|p|sam|gopr)[-_ ]?\d{3,}$", re.I)
_WS_RE = re.compile(r"\s+")
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_PLACEHOLDER_RE = re.compile(
    r"(?:^|/)(?:blank|spacer|pixel|transparent|placeholder|lazy|loading|grey|gray|1x1)"
    r"[\w-]*\.(?:gif|png|svg)(?:$|\?)",
    re.IGNORECASE,
)
_IMG_TAG_RE = re.compile(rb"<img[\s/>]", re.IGNORECASE)
_LAZY_SRC_ATTRS = ("data-src", "data-lazy-src", "data-original", "data-url")
_HTML_TYPES = ("text/html", "application/xhtml+xml")


@dataclass(frozen=True)
class AltText:
    url: str  # normalized absolute image URL
    page_url: str | None
    text: str
    page_lang: str | None  # wiki code declared by the page, a prior for LID
    source_offset: int
    prior_source: str | None = None  # "wikipedia" (subdomain) or "declared" (lang attribute/header)

    @property
    def uid(self) -> str:
        return url_uid(self.url)


@dataclass(frozen=True)
class Limits:
    max_alt_chars: int = 2048
    max_html_bytes: int = 16 << 20
    max_member_bytes: int = 256 << 20


# --------------------------------------------------------------------------- image URLs


def _image_url(url: str | None, page_url: str | None, drops: Counter) -> str | None:
    if not url or not url.strip():
        drops["no_image_url"] += 1
        return None
    if "\ufffd" in url:  # bytes that were not UTF-8: a broken host or path, not a URL to fetch
        drops["invalid_url_encoding"] += 1
        return None
    try:
        absolute = normalize_url(url, page_url)
    except ValueError as error:
        reason = "relative_url_without_base" if "relative" in str(error) else "non_http_url"
        drops[reason] += 1
        return None
    if "\ufffd" in absolute:  # a page URL with undecodable bytes, resolved into this one
        drops["invalid_url_encoding"] += 1
        return None
    if len(absolute) > MAX_URL_CHARS:
        drops["url_too_long"] += 1
        return None
    return absolute


# --------------------------------------------------------------------------- alt text


def clean_alt(alt: str | None, url: str | None = None, unescape: bool = False) -> tuple[str, str]:
    """(text, "") for a usable alt text, else ("", drop_reason). Limits are checked by callers."""
    if alt is None:
        return "", "empty_alt"
    if unescape and "&" in alt:
        alt = html.unescape(alt)
    text = _WS_RE.sub(" ", _CONTROL_RE.sub(" ", alt)).strip()
    if not text:
        return "", "empty_alt"
    if "\ufffd" in text:
        return "", "invalid_text_encoding"
    if _URL_RE.match(text):
        return "", "alt_is_url"
    if _FILENAME_RE.match(text) or _CAMERA_NAME_RE.match(text):
        return "", "alt_is_filename"
    if url and _is_url_filename(text, url):
        return "", "alt_is_filename"
    return text, ""


def _is_url_filename(text: str, url: str) -> bool:
    """The alt is the URL's file name with its extension.

    An alt equal to the file name *stem* is kept: Wikipedia files are often named after their
    subject ("Trireme.jpg" with alt "Trireme"), and that alt is a real caption.
    """
    name = unquote(urlsplit(url).path.rsplit("/", 1)[-1])
    return bool(name) and "." in name and text == name


def _alt_record(
    alt: str | None,
    src: str | None,
    page_url: str | None,
    prior: tuple[str | None, str | None],
    offset: int,
    drops: Counter,
    limits: Limits,
    unescape: bool,
) -> AltText | None:
    if alt is not None and len(alt) > limits.max_alt_chars:
        drops["alt_too_long"] += 1
        return None
    text, reason = clean_alt(alt, src, unescape=unescape)
    if reason:
        drops[reason] += 1
        return None
    url = _image_url(src, page_url, drops)
    if url is None:
        return None
    return AltText(url, page_url, text, prior[0], offset, prior[1])


# --------------------------------------------------------------------------- WARC container


@dataclass(frozen=True)
class WarcRecord:
    offset: int  # offset of the gzip member (or of the record, uncompressed) in the file
    headers: dict[str, str]  # lower-cased names
    block: bytes


def iter_warc_records(stream, drops: Counter, limits: Limits = Limits()) -> Iterator[WarcRecord]:
    """Records of a WARC file (record-gzipped, whole-file gzipped or plain), surviving faults."""
    head = stream.read(3)
    gzipped = head == GZIP_MAGIC
    chunks = _GzipMembers(stream, head, drops, limits) if gzipped else _plain_chunks(stream, head)
    parser = _RecordParser(drops, gzipped, limits.max_member_bytes)
    for offset, data in chunks:
        if data is None:
            parser.reset()
        else:
            yield from parser.feed(offset, data)
    parser.reset()


def _plain_chunks(stream, head: bytes, size: int = 1 << 20) -> Iterator[tuple[int, bytes]]:
    offset, data = 0, head
    while True:
        more = stream.read(size)
        if data or more:
            yield offset, data + more
        if not more:
            return
        offset += len(data) + len(more)
        data = b""


class _GzipMembers:
    """Yields (member_offset, inflated bytes) per gzip member, and (offset, None) after a bad one.

    A failed member is skipped by searching for the next gzip magic after its start; what a
    truncated last member inflated before the cut is intact and still yielded.
    """

    def __init__(self, stream, head: bytes, drops: Counter, limits: Limits, size: int = 1 << 20):
        self.stream, self.raw, self.base, self.at_eof = stream, head, 0, False
        self.drops, self.limits, self.size = drops, limits, size

    def _read_more(self) -> bool:
        more = self.stream.read(self.size)
        if not more:
            self.at_eof = True
            return False
        self.raw += more
        return True

    def _find_magic(self, begin: int) -> int:
        while True:
            index = self.raw.find(GZIP_MAGIC, begin)
            if index >= 0:
                return index
            begin = max(begin, len(self.raw) - 2)
            if not self._read_more():
                return -1

    def __iter__(self) -> Iterator[tuple[int, bytes | None]]:
        start = 0
        while True:
            if start > self.size:  # compact the buffer
                self.raw, self.base, start = self.raw[start:], self.base + start, 0
            while len(self.raw) - start < len(GZIP_MAGIC) and self._read_more():
                pass
            if start >= len(self.raw):
                return
            if self.raw[start : start + 3] != GZIP_MAGIC:
                self.drops["corrupt_gzip"] += 1
                yield self.base + start, None
                start = self._find_magic(start + 1)
                if start < 0:
                    return
                continue
            reason, pos, data = self._inflate(start)
            offset = self.base + start
            if not reason:
                yield offset, data
                start = pos
                continue
            self.drops[reason] += 1
            if reason == "truncated_gzip":
                yield offset, data
                yield offset, None
                return
            yield offset, None
            start = self._find_magic(start + 1)
            if start < 0:
                return

    def _inflate(self, start: int) -> tuple[str, int, bytes]:
        decomp, pos, out, inflated = zlib.decompressobj(31), start, [], 0
        while True:
            if pos >= len(self.raw) and not self._read_more():
                return "truncated_gzip", pos, b"".join(out)
            piece = self.raw[pos : pos + (64 << 10)]
            try:
                data = decomp.decompress(piece)
            except zlib.error:
                return "corrupt_gzip", pos, b""
            inflated += len(data)
            if inflated > self.limits.max_member_bytes:
                return "oversized_member", pos, b""
            out.append(data)
            if decomp.eof:
                return "", pos + len(piece) - len(decomp.unused_data), b"".join(out)
            pos += len(piece)


class _RecordParser:
    """Splits a byte stream into WARC records; resynchronizes on the next `WARC/1.` line.

    Record offsets: the offset of the gzip member the record starts in (what Common Crawl's
    index stores), or the byte offset of the record in an uncompressed file.
    """

    MAX_HEADER_BYTES = 64 << 10

    def __init__(self, drops: Counter, gzipped: bool, max_record_bytes: int):
        self.drops, self.gzipped, self.max_record_bytes = drops, gzipped, max_record_bytes
        self.skip = 0  # bytes of an oversized record still to discard
        self.buf = b""
        self.buf_offset = 0  # offset attributed to buf[0]
        self.carry = 0  # bytes at the start of buf that came from earlier chunks

    def reset(self) -> None:
        if self.buf.strip():
            self.drops["truncated_record"] += 1
        self.buf, self.carry, self.skip = b"", 0, 0

    def feed(self, offset: int, data: bytes) -> Iterator[WarcRecord]:
        if not self.buf:
            self.buf_offset, self.carry = offset, 0
        self.chunk_offset = offset
        self.buf += data
        while True:
            if self.skip:
                skipped = min(self.skip, len(self.buf))
                self.skip -= skipped
                self._consume(skipped)
                if self.skip:
                    break
            stripped = self.buf.lstrip(b"\r\n")
            self._consume(len(self.buf) - len(stripped))
            buf = self.buf
            if not buf:
                break
            if not buf.startswith(b"WARC/"):
                if len(buf) < 5 and b"WARC/".startswith(buf):
                    break
                self._resync()
                continue
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > self.MAX_HEADER_BYTES:
                    self._resync()
                    continue
                break
            headers = _parse_warc_headers(buf[:end])
            length = _content_length(headers)
            if headers is None or length is None:
                self._resync()
                continue
            total = end + 4 + length
            if length > self.max_record_bytes:
                self.drops["oversized_record"] += 1
                self.skip = total
                continue
            if len(buf) < total:
                break
            yield WarcRecord(self.buf_offset, headers, buf[end + 4 : total])
            self._consume(total)
        self.carry = len(self.buf)

    def _consume(self, count: int) -> None:
        if not count:
            return
        self.buf = self.buf[count:]
        if not self.gzipped:
            self.buf_offset += count
        elif count >= self.carry:
            self.buf_offset, self.carry = self.chunk_offset, 0
        else:
            self.carry -= count

    def _resync(self) -> None:
        self.drops["broken_warc_header"] += 1
        index = self.buf.find(b"\nWARC/1.", 1)
        self._consume(index + 1 if index >= 0 else len(self.buf))


def _parse_warc_headers(raw: bytes) -> dict[str, str] | None:
    lines = raw.decode("utf-8", "replace").split("\r\n")
    if not lines[0].startswith("WARC/1."):
        return None
    headers = {}
    for line in lines[1:]:
        if line[:1] in (" ", "\t") and headers:
            continue  # folded continuation line: not needed for the fields we read
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            return None
        headers[name.strip().lower()] = value.strip()
    return headers


def _content_length(headers: dict[str, str] | None) -> int | None:
    if headers is None:
        return None
    value = headers.get("content-length", "")
    return int(value) if value.isdigit() else None


# --------------------------------------------------------------------------- HTTP and HTML


@dataclass(frozen=True)
class HttpResponse:
    status: int
    headers: dict[str, str]
    body: bytes


def parse_http_response(block: bytes) -> HttpResponse | None:
    end = block.find(b"\r\n\r\n")
    sep = 4
    if end < 0:
        end, sep = block.find(b"\n\n"), 2
    if end < 0:
        return None
    lines = block[:end].decode("latin-1").splitlines()
    status_line = lines[0].split(" ", 2) if lines else []
    if len(status_line) < 2 or not status_line[0].startswith("HTTP/"):
        return None
    try:
        status = int(status_line[1])
    except ValueError:
        return None
    headers = {}
    for line in lines[1:]:
        name, found, value = line.partition(":")
        if found:
            headers[name.strip().lower()] = value.strip()
    return HttpResponse(status, headers, block[end + sep :])


def _decoded_body(response: HttpResponse) -> bytes | None:
    body = response.body
    if "chunked" in response.headers.get("transfer-encoding", "").lower():
        body = _dechunk(body)
    encoding = response.headers.get("content-encoding", "").lower().strip()
    try:
        if encoding in ("gzip", "x-gzip"):
            return gzip.decompress(body)
        if encoding == "deflate":
            return zlib.decompress(body, -zlib.MAX_WBITS if body[:1] != b"\x78" else zlib.MAX_WBITS)
        if encoding == "br":
            import brotli

            return brotli.decompress(body)
    except Exception:  # noqa: BLE001 - any decoder failure is the same drop reason
        return None
    return body


def _dechunk(body: bytes) -> bytes:
    out, pos = [], 0
    while pos < len(body):
        line_end = body.find(b"\r\n", pos)
        if line_end < 0:
            return body
        try:
            size = int(body[pos:line_end].split(b";")[0], 16)
        except ValueError:
            return body  # not actually chunked (crawlers often store the decoded payload)
        if size == 0:
            break
        out.append(body[line_end + 2 : line_end + 2 + size])
        pos = line_end + 2 + size + 2
    return b"".join(out)


def _charset(content_type: str) -> str | None:
    match = re.search(r"charset\s*=\s*[\"']?([\w.:-]+)", content_type, re.IGNORECASE)
    return match.group(1).lower() if match else None


def _looks_like_html(body: bytes) -> bool:
    head = body[:1024]
    if b"\x00" in head:
        return False
    return head.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] == b"<"


def html_images(body: bytes, charset: str | None):
    """(html lang, base href, [(alt or None, src or None)]) of an HTML document."""
    from resiliparse.parse.encoding import detect_encoding
    from resiliparse.parse.html import HTMLTree

    encoding = charset or detect_encoding(body, from_html_meta=True)
    try:
        text = body.decode(encoding)
    except LookupError:
        text = body.decode("utf-8", "replace")
    except UnicodeDecodeError:
        # Only the undecodable bytes become U+FFFD (and their alt texts are dropped); a fallback
        # to another charset for the whole page would garble every other non-ASCII alt.
        text = body.decode(encoding, "replace")
    tree = HTMLTree.parse(text)
    document = tree.document
    root = document.query_selector("html")
    lang = root.getattr("lang") if root is not None else None
    base = document.query_selector("base[href]")
    images = []
    for node in document.query_selector_all("img").values():  # iterating the list is O(n^2)
        images.append((node.getattr("alt"), _img_src(node)))
    return lang, base.getattr("href") if base is not None else None, images


def _img_src(node) -> str | None:
    """`src`, unless it is missing or a placeholder (data: URI, blank/spacer/lazy GIF) and a
    lazy-load attribute or srcset names the real image."""
    src = (node.getattr("src") or "").strip()
    if src and not _is_placeholder(src):
        return src
    for attr in _LAZY_SRC_ATTRS:
        value = (node.getattr(attr) or "").strip()
        if value and not value.lower().startswith("data:"):
            return value
    srcset = (node.getattr("srcset") or node.getattr("data-srcset") or "").strip()
    if srcset:
        return srcset.split(",")[0].strip().split(" ")[0]
    return src or None


def _is_placeholder(src: str) -> bool:
    return src[:5].lower() == "data:" or bool(_PLACEHOLDER_RE.search(src))


def page_prior(
    page_url: str | None, html_lang: str | None, content_language: str | None
) -> tuple[str | None, str | None]:
    """(wiki code, source) the page declares: its Wikipedia subdomain ("wikipedia"), else
    `<html lang>` or the Content-Language header ("declared": often a template default)."""
    wiki = wikipedia_language(page_url)
    if wiki:
        return wiki, "wikipedia"
    declared = language_from_tag(html_lang) or language_from_tag(
        (content_language or "").split(",")[0]
    )
    return (declared, "declared") if declared else (None, None)


def page_language(page_url: str | None, html_lang: str | None, content_language: str | None):
    return page_prior(page_url, html_lang, content_language)[0]


# --------------------------------------------------------------------------- readers


def extract_warc(stream, drops: Counter, limits: Limits = Limits()) -> Iterator[AltText]:
    for record in iter_warc_records(stream, drops, limits):
        if record.headers.get("warc-type") != "response":
            continue
        page_url = record.headers.get("warc-target-uri", "").strip("<> ")
        yield from response_alt_texts(page_url, record.block, record.offset, drops, limits)


def response_alt_texts(
    page_url: str, block: bytes, offset: int, drops: Counter, limits: Limits = Limits()
) -> Iterator[AltText]:
    """Alt-texts of one WARC response record's block (HTTP headers + body)."""
    if not page_url or "\ufffd" in page_url:
        drops["broken_warc_header"] += 1
        return
    response = parse_http_response(block)
    if response is None:
        drops["not_html"] += 1
        return
    if response.status != 200:
        drops["http_status"] += 1
        return
    content_type = response.headers.get("content-type", "").lower()
    if content_type and not content_type.startswith(_HTML_TYPES):
        drops["not_html"] += 1
        return
    body = _decoded_body(response)
    if body is None:
        drops["bad_content_encoding"] += 1
        return
    if len(body) > limits.max_html_bytes:
        drops["html_too_large"] += 1
        return
    if not _looks_like_html(body):
        drops["not_html"] += 1
        return
    if not _IMG_TAG_RE.search(body):
        return  # no <img> at all: skip the parse
    try:
        lang, base, images = html_images(body, _charset(content_type))
    except Exception:  # noqa: BLE001 - the parser's failure modes are not enumerable
        drops["html_parse_error"] += 1
        return
    prior = page_prior(page_url, lang, response.headers.get("content-language"))
    base_url = urljoin(page_url, base) if base else page_url
    for alt, src in images:
        record = _alt_record(alt, src, base_url, prior, offset, drops, limits, unescape=False)
        if record is not None:
            yield record if base_url == page_url else _with_page(record, page_url)


def _with_page(record: AltText, page_url: str) -> AltText:
    return AltText(
        record.url,
        page_url,
        record.text,
        record.page_lang,
        record.source_offset,
        record.prior_source,
    )


def extract_wat(stream, drops: Counter, limits: Limits = Limits()) -> Iterator[AltText]:
    """IMG@/src links with an alt from the HTML-Metadata of Common Crawl WAT response records."""
    for record in iter_warc_records(stream, drops, limits):
        if record.headers.get("warc-type") != "metadata":
            continue
        try:
            envelope = json.loads(record.block)["Envelope"]
        except (ValueError, KeyError, TypeError):
            drops["bad_json"] += 1
            continue
        if not isinstance(envelope, dict):
            drops["bad_json"] += 1
            continue
        warc_headers = envelope.get("WARC-Header-Metadata") or {}
        if warc_headers.get("WARC-Type") != "response":
            continue
        page_url = warc_headers.get("WARC-Target-URI") or record.headers.get("warc-target-uri")
        response = (envelope.get("Payload-Metadata") or {}).get("HTTP-Response-Metadata") or {}
        html_meta = response.get("HTML-Metadata") or {}
        http_headers = {str(k).lower(): v for k, v in (response.get("Headers") or {}).items()}
        head = html_meta.get("Head") or {}
        base = head.get("Base") if isinstance(head, dict) else None
        base_url = urljoin(page_url, base) if page_url and isinstance(base, str) else page_url
        prior = page_prior(page_url, None, _text(http_headers.get("content-language")))
        for link in html_meta.get("Links") or []:
            if not isinstance(link, dict) or link.get("path") != "IMG@/src":
                continue
            alt = link.get("alt")
            record_ = _alt_record(
                alt if isinstance(alt, str) else None,
                _text(link.get("url")),
                base_url,
                prior,
                record.offset,
                drops,
                limits,
                unescape=True,
            )
            if record_ is not None:
                yield _with_page(record_, page_url) if base_url != page_url else record_


def _text(value) -> str | None:
    return value if isinstance(value, str) else None


@dataclass(frozen=True)
class Columns:
    text: str | None = None  # None: first present of TEXT_COLUMNS
    url: str | None = None
    page_url: str | None = None


MAX_KEYS_SEEN = 1000  # distinct JSONL keys remembered for the missing-column check
TEXT_COLUMNS = ("text", "caption", "alt", "caption_reference_description", "TEXT")
URL_COLUMNS = ("url", "image_url", "URL")
PAGE_URL_COLUMNS = ("page_url",)


def extract_tsv(stream, drops: Counter, limits: Limits = Limits()) -> Iterator[AltText]:
    """CC3M layout: `caption<TAB>url`, no header. Offsets are byte offsets of lines."""
    offset = 0
    for raw in stream:
        line_offset, offset = offset, offset + len(raw)
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if not line:  # an empty line is no row; one of blanks is a row with nothing in it
            continue
        fields = line.split("\t")
        if len(fields) < 2:
            drops["bad_row"] += 1
            continue
        record = _alt_record(
            fields[0], fields[1], None, (None, None), line_offset, drops, limits, unescape=True
        )
        if record is not None:
            yield record


def extract_jsonl(
    stream, drops: Counter, limits: Limits = Limits(), columns: Columns = Columns()
) -> Iterator[AltText]:
    """One JSON object per line. Rows may omit keys (each such row is a `bad_row`), but a file
    in which no row has a text or URL column at all is a MissingColumnError, as for Parquet:
    the column names are wrong, not the rows."""
    offset, keys = 0, set()
    for raw in stream:
        line_offset, offset = offset, offset + len(raw)
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except ValueError:
            drops["bad_json"] += 1
            continue
        if not isinstance(row, dict):
            drops["bad_json"] += 1
            continue
        if len(keys) < MAX_KEYS_SEEN:
            keys.update(row)
        record = _table_record(row, line_offset, drops, limits, columns)
        if record is not None:
            yield record
    if keys and len(keys) < MAX_KEYS_SEEN:
        names = sorted(keys)
        _pick(columns.text, TEXT_COLUMNS, names)
        _pick(columns.url, URL_COLUMNS, names)


def extract_parquet(
    stream, drops: Counter, limits: Limits = Limits(), columns: Columns = Columns()
) -> Iterator[AltText]:
    """Offsets are row numbers within the file."""
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(stream)
    names = parquet.schema_arrow.names
    wanted = {
        _pick(columns.text, TEXT_COLUMNS, names),
        _pick(columns.url, URL_COLUMNS, names),
        _pick(columns.page_url, PAGE_URL_COLUMNS, names, required=False),
    } - {None}
    row_number = 0
    for batch in parquet.iter_batches(batch_size=8192, columns=sorted(wanted)):
        for row in batch.to_pylist():
            record = _table_record(row, row_number, drops, limits, columns)
            row_number += 1
            if record is not None:
                yield record


class MissingColumnError(ValueError):
    """A caption table without the column the job needs: a one-line error naming the file."""


def _pick(given: str | None, candidates: Iterable[str], names, required: bool = True):
    if given:
        if given not in names:
            raise MissingColumnError(f"column {given!r} not found (columns: {', '.join(names)})")
        return given
    for name in candidates:
        if name in names:
            return name
    if required:
        raise MissingColumnError(
            f"none of the columns {list(candidates)} found (columns: {list(names)})"
        )
    return None


def _table_record(row: dict, offset: int, drops: Counter, limits: Limits, columns: Columns):
    text = row.get(columns.text) if columns.text else _first(row, TEXT_COLUMNS)
    url = row.get(columns.url) if columns.url else _first(row, URL_COLUMNS)
    page_url = row.get(columns.page_url) if columns.page_url else _first(row, PAGE_URL_COLUMNS)
    if not isinstance(text, str) or not isinstance(url, str):
        drops["bad_row"] += 1
        return None
    page_url = page_url if isinstance(page_url, str) and page_url else None
    prior = page_prior(page_url, None, None)
    return _alt_record(text, url, page_url, prior, offset, drops, limits, unescape=True)


def _first(row: dict, names: Iterable[str]):
    for name in names:
        if name in row:
            return row[name]
    return None


READERS = {
    "warc": extract_warc,
    "wat": extract_wat,
    "tsv": extract_tsv,
    "jsonl": extract_jsonl,
    "parquet": extract_parquet,
}


def infer_format(path: str) -> str | None:
    name = path.lower().rsplit("/", 1)[-1]
    for suffix in (".gz", ".bz2", ".zst"):
        name = name.removesuffix(suffix)
    if name.endswith(".paths"):
        return "paths"
    if name.endswith((".warc.wat", ".wat")):
        return "wat"
    if name.endswith(".warc"):
        return "warc"
    if name.endswith((".tsv", ".txt")):
        return "tsv"
    if name.endswith((".jsonl", ".json", ".ndjson")):
        return "jsonl"
    if name.endswith(".parquet"):
        return "parquet"
    return None


REMOTE_READ_ATTEMPTS = 3
RETRY_BACKOFF_S = 2.0


def extract_file(
    uri: str,
    input_format: str,
    drops: Counter,
    limits: Limits = Limits(),
    columns: Columns = Columns(),
    attempts: int | None = None,
    backoff_s: float = RETRY_BACKOFF_S,
) -> Iterator[AltText]:
    """Records of one input file; an unreadable file is one `unreadable_file` drop.

    A remote file (object store, http) whose open or read fails is read again, up to `attempts`
    times with exponential backoff: object stores drop connections on a crawl-sized job. A
    retry skips the records already yielded (the readers are deterministic) and the drop counts
    are those of the attempt that read furthest, so a recovered file counts exactly as a clean
    read. Local files are not retried (a local error is not transient)."""
    import time

    if attempts is None:
        attempts = 1 if local_path(uri) is not None else REMOTE_READ_ATTEMPTS
    yielded, furthest = 0, Counter()
    for attempt in range(attempts):
        counted, emitted = Counter(), 0
        try:
            for record in _read_file(uri, input_format, counted, limits, columns):
                emitted += 1
                if emitted > yielded:
                    yielded = emitted
                    yield record
            drops.update(counted)
            return
        except _Unreadable as error:
            if emitted >= yielded:
                furthest = counted
            if not error.transient or attempt + 1 == attempts:
                break
            time.sleep(backoff_s * 2**attempt)
    drops.update(furthest)
    drops["unreadable_file"] += 1


class _Unreadable(Exception):
    def __init__(self, transient: bool):
        self.transient = transient


def _read_file(uri, input_format, drops, limits, columns) -> Iterator[AltText]:
    from http.client import HTTPException

    from pyarrow.lib import ArrowException

    reader = READERS[input_format]
    try:
        stream = open_binary(uri)
    except OSError as error:
        raise _Unreadable(transient=is_transient(error)) from None
    with stream:
        if input_format in ("tsv", "jsonl") and _is_gzip_name(uri):
            stream = gzip.open(stream)
        kwargs = {"columns": columns} if input_format in ("jsonl", "parquet") else {}
        found = 0
        try:
            for record in reader(stream, drops, limits, **kwargs):
                found += 1
                yield record
        except MissingColumnError as error:  # a table without the text column: say which file
            raise MissingColumnError(f"{uri}: {error}") from None
        except gzip.BadGzipFile:  # the bytes themselves are bad: reading again will not help
            raise _Unreadable(transient=False) from None
        except (OSError, HTTPException, ArrowException):  # dropped connection, bad footer
            if _is_empty(uri):  # Parquet's reader refuses a 0-byte file
                drops["empty_file"] += 1
                return
            raise _Unreadable(transient=True) from None
        except (EOFError, zlib.error):
            raise _Unreadable(transient=False) from None
    if not found and not drops and _is_empty(uri):
        drops["empty_file"] += 1


def _is_empty(uri: str) -> bool:
    """Whether the file is known to hold 0 bytes (an unknown size is not empty)."""
    try:
        return file_size(uri) == 0
    except OSError:
        return False


def _is_gzip_name(uri: str) -> bool:
    return uri.lower().endswith(".gz")
