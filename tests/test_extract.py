from __future__ import annotations

import io
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import shared_path
from warc_fixtures import gz, warc_record, wat_record

from curation.alt_text.extract import (
    DROP_REASONS,
    Columns,
    Limits,
    clean_alt,
    extract_file,
    extract_jsonl,
    extract_tsv,
    extract_warc,
    extract_wat,
    infer_format,
    iter_warc_records,
)
from curation.identity import image_uid, normalize_url

PAGE = "https://an.wikipedia.org/wiki/Escopete"


# --------------------------------------------------------------------------- WARC writers


def http_response(body: bytes, content_type: str = "text/html; charset=UTF-8", status=200):
    head = f"HTTP/1.1 {status} OK\r\nContent-Type: {content_type}\r\n\r\n"
    return head.encode() + body


def html_page(*imgs: tuple[str, str], lang: str = "da") -> bytes:
    tags = "".join(f'<img src="{src}" alt="{alt}">' for src, alt in imgs)
    return f'<html lang="{lang}"><body><p>x</p>{tags}</body></html>'.encode()


def response(uri: str, body: bytes, **kwargs) -> bytes:
    return warc_record("response", uri, http_response(body, **kwargs))


def run_warc(data: bytes, limits: Limits | None = None):
    drops = Counter()
    records = list(extract_warc(io.BytesIO(data), drops, limits or Limits()))
    return records, drops


# --------------------------------------------------------------------------- URLs and uid


def test_uid_resolves_relative_and_protocol_relative_urls():
    absolute = "https://upload.wikimedia.org/a/b.png"
    assert image_uid("//upload.wikimedia.org/a/b.png", PAGE) == image_uid(absolute)
    assert image_uid("HTTPS://Upload.Wikimedia.ORG/a/b.png#frag") == image_uid(absolute)
    assert image_uid("https://upload.wikimedia.org:443/a/b.png") == image_uid(absolute)
    assert image_uid("/a/b.png", "https://upload.wikimedia.org/wiki/X") == image_uid(absolute)
    assert image_uid("https://upload.wikimedia.org/a/B.png") != image_uid(absolute)  # path case
    assert len(image_uid(absolute)) == 32 and int(image_uid(absolute), 16) >= 0
    assert normalize_url("b.png", "http://x.org/dir/page.html") == "http://x.org/dir/b.png"
    with pytest.raises(ValueError):
        normalize_url("/a.png")
    with pytest.raises(ValueError):
        normalize_url("data:image/png;base64,AAAA", PAGE)


def test_clean_alt_reasons():
    assert clean_alt("  a\n\tcat  &amp; dog ", unescape=True) == ("a cat & dog", "")
    assert clean_alt("a &amp; b") == ("a &amp; b", "")  # HTML parser already decoded entities
    assert clean_alt(None) == ("", "empty_alt")
    assert clean_alt(" \xa0 ") == ("", "empty_alt")
    assert clean_alt("DSC_0012.JPG") == ("", "alt_is_filename")
    assert clean_alt("IMG_20190101") == ("", "alt_is_filename")
    assert clean_alt("TI-89.jpg", "http://x.org/TI-89.jpg") == ("", "alt_is_filename")
    assert clean_alt("Trireme", "http://x.org/Trireme.jpg") == ("Trireme", "")  # a real caption
    assert clean_alt("https://example.com/x") == ("", "alt_is_url")
    assert clean_alt("www.example.com") == ("", "alt_is_url")
    assert clean_alt("caf\ufffd au lait") == ("", "invalid_text_encoding")


def test_infer_format():
    assert infer_format("s3://b/CC-MAIN-1-00000.warc.gz") == "warc"
    assert infer_format("x/CC-MAIN-1-00000.warc.wat.gz") == "wat"
    assert infer_format("warc.paths.gz") == "paths"
    assert infer_format("cc3m.tsv") == "tsv"
    assert infer_format("test_da.jsonl") == "jsonl"
    assert infer_format("part-0.parquet") == "parquet"
    assert infer_format("README.md") is None


# --------------------------------------------------------------------------- real samples


def test_real_whirlwind_warc_yields_aragonese_alt_texts():
    drops = Counter()
    records = list(extract_file(str(shared_path("whirlwind.warc.gz")), "warc", drops))
    by_text = {r.text: r for r in records}
    wikimedia = {r.text for r in records if r.url.startswith("https://upload.wikimedia.org/")}
    assert wikimedia == {"Escudo d'armas", "Escopete ubicada en Castiella-La Mancha", "Escopete"}
    assert set(by_text) == wikimedia | {
        "Biquipedia",
        "A enciclopedia libre",
        "Wikimedia Foundation",
        "Powered by MediaWiki",
    }
    assert by_text["Escopete"].url == (
        "https://upload.wikimedia.org/wikipedia/commons/thumb/d/d2/Map_pointer.svg/"
        "12px-Map_pointer.svg.png"
    )
    assert by_text["Biquipedia"].url == (
        "https://an.wikipedia.org/static/images/mobile/copyright/wikipedia-wordmark-an.svg"
    )
    assert {r.page_url for r in records} == {PAGE}
    assert {(r.page_lang, r.prior_source) for r in records} == {("an", "wikipedia")}
    assert {r.source_offset for r in records} == {1023}  # gzip member of the response record
    assert drops == Counter(empty_alt=6)


def test_real_wat_sample_parses_without_drops():
    drops = Counter()
    path = str(shared_path("whirlwind.warc.wat.gz"))
    with open(path, "rb") as f:
        types = [r.headers["warc-type"] for r in iter_warc_records(f, drops)]
    assert types == ["warcinfo", "metadata"]
    assert list(extract_file(path, "wat", drops)) == []  # its only metadata is a request's
    assert drops == Counter()


def test_wat_records_in_common_crawl_format():
    real = shared_path("whirlwind.warc.wat.gz").read_bytes()
    page = "https://example.dk/artikel/1"
    links = [
        {"path": "IMG@/src", "url": "/billeder/hund.jpg", "alt": "En hund i sneen"},
        {"path": "IMG@/src", "url": "//cdn.example.dk/kat.png", "alt": "Kat &amp; mus"},
        {"path": "IMG@/src", "url": "https://Cdn.Example.dk/fugl.webp#x", "alt": "Fugl"},
        {"path": "IMG@/src", "url": "/tom.gif"},
        {"path": "IMG@/src", "url": "data:image/gif;base64,R0lGOD", "alt": "pixel"},
        {"path": "A@/href", "url": "/andet", "text": "Et link"},
    ]
    data = real + gz(wat_record(page, links, content_language="da-DK"))
    data += gz(warc_record("metadata", page, b"{not json"))
    drops = Counter()
    records = list(extract_wat(io.BytesIO(data), drops))
    assert [(r.url, r.text) for r in records] == [
        ("https://example.dk/billeder/hund.jpg", "En hund i sneen"),
        ("https://cdn.example.dk/kat.png", "Kat & mus"),
        ("https://cdn.example.dk/fugl.webp", "Fugl"),
    ]
    assert {(r.page_lang, r.prior_source) for r in records} == {("da", "declared")}
    assert {r.page_url for r in records} == {page}
    assert records[0].source_offset == len(real)
    assert drops == Counter(empty_alt=1, non_http_url=1, bad_json=1)


def test_cc3m_tsv_and_wit_jsonl():
    drops = Counter()
    cc3m = list(extract_file(str(shared_path("cc3m_val_10k.tsv")), "tsv", drops))
    assert len(cc3m) + sum(drops.values()) == 10_000
    assert len(cc3m) >= 9_990 and all(r.url.startswith("http") for r in cc3m)
    assert cc3m[1].text == "an angler fishes river on a snowy day ."
    drops = Counter()
    wit = list(extract_file(str(shared_path("wit", "test_da.jsonl")), "jsonl", drops))
    assert len(wit) + sum(drops.values()) == 891
    assert {r.page_lang for r in wit} == {"da"}
    assert wit[0].page_url == "https://da.wikipedia.org/wiki/Viborg_Stifts_Folkeblad"


def test_tables_with_named_columns_and_bad_rows(tmp_path):
    drops = Counter()
    lines = b"a cat\thttp://x.org/cat.jpg\nno url here\n\n\xffbroken\thttp://x.org/b.jpg\n"
    records = list(extract_tsv(io.BytesIO(lines), drops))
    assert [(r.text, r.source_offset) for r in records] == [("a cat", 0)]
    assert drops == Counter(bad_row=1, invalid_text_encoding=1)

    jsonl = b'{"t": "Hund", "u": "/h.jpg", "p": "https://da.wikipedia.org/wiki/H"}\n[1]\n{bad\n'
    drops = Counter()
    records = list(extract_jsonl(io.BytesIO(jsonl), drops, columns=Columns("t", "u", "p")))
    assert [(r.url, r.page_lang) for r in records] == [("https://da.wikipedia.org/h.jpg", "da")]
    assert drops == Counter(bad_json=2)

    path = tmp_path / "captions.parquet"
    table = pa.table({"caption": ["ein Hund", None, "x"], "image_url": ["http://a.de/h.jpg"] * 3})
    pq.write_table(table, path)
    drops = Counter()
    records = list(extract_file(str(path), "parquet", drops))
    assert [(r.text, r.source_offset) for r in records] == [("ein Hund", 0), ("x", 2)]
    assert drops == Counter(bad_row=1)
    with pytest.raises(ValueError, match="not found"):
        list(extract_file(str(path), "parquet", Counter(), columns=Columns(text="nope")))


def test_unreadable_file_is_a_drop(tmp_path):
    drops = Counter()
    assert list(extract_file(str(tmp_path / "missing.warc.gz"), "warc", drops)) == []
    assert drops == Counter(unreadable_file=1)


# --------------------------------------------------------------------------- fault injection


def test_fault_injection_counts_every_fault_and_keeps_every_good_record():
    good_pages = {
        f"https://example.dk/side/{i}": [
            (f"/img/{i}-a.jpg", f"Billede {i} af en hund"),
            (f"//cdn.example.dk/{i}-b.png", f"Foto {i} fra havnen"),
        ]
        for i in range(8)
    }
    good = [gz(response(url, html_page(*imgs))) for url, imgs in good_pages.items()]
    expected = {
        (normalize_url(src, url), alt) for url, imgs in good_pages.items() for src, alt in imgs
    }
    bad_utf8 = http_response(
        b'<html><img src="/u.jpg" alt="caf\xe9 au lait"><img src="/ok.jpg" alt="R\xc3\xb8d kaffe">'
        b"</html>"
    )
    huge = html_page(("/huge.jpg", "x" * (10 << 20)), ("/small.jpg", "Lille billede"))
    truncated_member = gz(response("https://example.dk/cut", html_page(("/c.jpg", "Skåret"))))
    corrupt_member = bytearray(gz(response("https://example.dk/bad", html_page(("/d.jpg", "D")))))
    corrupt_member[30:60] = b"\x00" * 30
    stream = b"".join(
        [
            gz(warc_record("warcinfo", None, b"software: test\r\n")),
            good[0],
            truncated_member[: len(truncated_member) // 2],  # truncated gzip mid-file
            good[1],
            gz(warc_record("response", "https://example.dk/utf8", bad_utf8)),
            good[2],
            gz(
                response(
                    "https://example.dk/logo.png",
                    b"\x89PNG\r\n\x1a\n\x00\x00",
                    content_type="image/png",
                )
            ),  # noqa: E501
            gz(response("https://example.dk/bin", b"\x00\x01\x02binary", content_type="")),
            good[3],
            gz(response("https://example.dk/huge", huge)),
            good[4],
            gz(b"WARC/1.0\r\nWARC-Type: response\r\nContent-Length: abc\r\n\r\nxyz\r\n\r\n"),
            gz(b"HTTP/1.1 200 OK\r\nthis is not a WARC record\r\n\r\n"),
            good[5],
            bytes(corrupt_member),
            good[6],
            b"garbage between members",
            gz(response("https://example.dk/moved", b"", status=301)),
            good[7],
            gz(response("https://example.dk/last", html_page(("/l.jpg", "Sidste"))))[:-20],
        ]
    )
    records, drops = run_warc(stream)
    got = {(r.url, r.text) for r in records}
    assert expected <= got
    assert got - expected == {
        ("https://example.dk/ok.jpg", "Rød kaffe"),  # no mojibake
        ("https://example.dk/small.jpg", "Lille billede"),
    }
    assert drops == Counter(
        corrupt_gzip=3,  # truncated member followed by more data, zeroed bytes, garbage
        truncated_gzip=1,  # the file ends inside the last member
        truncated_record=1,  # ... whose inflated part holds an incomplete record
        invalid_text_encoding=1,
        not_html=2,
        alt_too_long=1,
        broken_warc_header=2,
        http_status=1,
    )
    # the offsets of good records are their gzip members' offsets
    first = next(r for r in records if r.page_url == "https://example.dk/side/0")
    assert stream[first.source_offset : first.source_offset + 3] == b"\x1f\x8b\x08"


def test_uncompressed_and_whole_file_gzip_warc_resynchronize_after_broken_headers():
    page = "https://example.dk/p"
    plain = b"".join(
        [
            response(page, html_page(("/1.jpg", "En"))),
            b"WARC/1.0\r\nContent-Length: -5\r\n\r\n",
            b"junk junk\r\n",
            response(page, html_page(("/2.jpg", "To"))),
        ]
    )
    for data in (plain, gz(plain)):
        records, drops = run_warc(data)
        assert [r.text for r in records] == ["En", "To"]
        assert drops == Counter(broken_warc_header=1)
    records, _ = run_warc(plain)
    assert records[1].source_offset == plain.index(b"WARC/1.0", 10 + plain.index(b"junk"))


def test_limits_bound_html_and_members():
    page = html_page(("/1.jpg", "En hund"))
    data = gz(response("https://example.dk/p", page))
    records, drops = run_warc(data, Limits(max_html_bytes=10))
    assert records == [] and drops == Counter(html_too_large=1)
    records, drops = run_warc(data, Limits(max_member_bytes=100))
    assert records == [] and drops == Counter(oversized_member=1)
    big = response("https://example.dk/big", html_page(("/b.jpg", "x" * 5000)))
    plain = big + response("https://example.dk/p", page)
    records, drops = run_warc(plain, Limits(max_member_bytes=4000))
    assert [r.text for r in records] == ["En hund"] and drops == Counter(oversized_record=1)


def test_lazy_images_srcset_base_href_and_charset():
    body = (
        '<html><head><meta charset="windows-1252"><base href="https://static.example.de/i/">'
        "</head><body>"
        '<img src="data:image/gif;base64,R0lG" data-src="lazy.jpg" alt="Faul">'
        '<img srcset="/s-1x.jpg 1x, /s-2x.jpg 2x" alt="Satz">'
        '<img src="/img/blank.gif" data-lazy-src="/echt.jpg" alt="Verzögert">'
        '<img src="/img/spacer.gif" alt="Nur ein Abstandhalter">'
        '<img src="data:image/gif;base64,R0lG" alt="Nur Platzhalter">'
        '<img src="javascript:void(0)" alt="Skript">'
        '<img src="rel.jpg" alt="M\xfcnchen">'
        "</body></html>"
    ).encode("cp1252")
    records, drops = run_warc(response("https://example.de/seite", body, content_type="text/html"))
    assert [(r.url, r.text) for r in records] == [
        ("https://static.example.de/i/lazy.jpg", "Faul"),
        ("https://static.example.de/s-1x.jpg", "Satz"),
        ("https://static.example.de/echt.jpg", "Verzögert"),
        ("https://static.example.de/img/spacer.gif", "Nur ein Abstandhalter"),
        ("https://static.example.de/i/rel.jpg", "München"),
    ]
    assert {r.page_url for r in records} == {"https://example.de/seite"}
    assert drops == Counter(non_http_url=2)


def test_inputs_by_file_and_http_uri(tmp_path):
    import functools
    import http.server
    import shutil
    import threading

    shutil.copy(shared_path("whirlwind.warc.gz"), tmp_path / "w.warc.gz")
    local = list(extract_file(str(tmp_path / "w.warc.gz"), "warc", Counter()))
    assert list(extract_file(f"file://{tmp_path}/w.warc.gz", "warc", Counter())) == local
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        assert list(extract_file(f"{base}/w.warc.gz", "warc", Counter())) == local
        drops = Counter()
        assert list(extract_file(f"{base}/missing.warc.gz", "warc", drops)) == []
        assert drops == Counter(unreadable_file=1)
    finally:
        server.shutdown()


def test_remote_reads_are_retried_and_a_recovered_file_counts_as_a_clean_read(tmp_path):
    """An object store or web server that drops the connection mid-file, or answers 503, costs
    a retry, not the file: the records come out once each and the drops match a clean read."""
    from flaky_http import flaky_server

    data = shared_path("whirlwind.warc.gz").read_bytes()
    clean_drops = Counter()
    clean = list(extract_file(str(shared_path("whirlwind.warc.gz")), "warc", clean_drops))
    with flaky_server(lambda name: data) as (base, requests):
        for name, attempts_seen in (("cut", 3), ("busy", 2)):
            drops = Counter()
            records = list(extract_file(f"{base}/{name}.warc.gz", "warc", drops, backoff_s=0.01))
            assert records == clean and drops == clean_drops, name
            assert requests[f"{name}.warc.gz"] == attempts_seen
        for name, attempts_seen in (("down", 3), ("gone", 1)):  # 404 is not worth a retry
            drops = Counter()
            assert list(extract_file(f"{base}/{name}.warc.gz", "warc", drops, backoff_s=0.01)) == []
            assert drops == Counter(unreadable_file=1)
            assert requests[f"{name}.warc.gz"] == attempts_seen, name
    corrupt = tmp_path / "bad.tsv.gz"  # bad bytes on local disk: read once, one drop
    corrupt.write_bytes(b"\x1f\x8b\x08\x00garbage" * 10)
    drops = Counter()
    assert list(extract_file(str(corrupt), "tsv", drops, attempts=3, backoff_s=0.01)) == []
    assert drops == Counter(unreadable_file=1)


def test_pages_without_img_and_uppercase_tags():
    no_images = response("https://example.dk/text", b"<html><p>kun tekst, <imgx>?</p></html>")
    upper = response("https://example.dk/u", b'<HTML><BODY><IMG\nSRC="/a.jpg" ALT="Stor"></BODY>')
    records, drops = run_warc(no_images + upper)
    assert [(r.url, r.text) for r in records] == [("https://example.dk/a.jpg", "Stor")]
    assert drops == Counter()


def test_undecodable_bytes_in_a_url_are_a_counted_drop():
    """Issue 36, case 5: bytes that are not UTF-8 in a TSV's URL made a broken host (U+FFFD)
    that was kept; now the row is dropped as invalid_url_encoding, like such bytes in text."""
    lines = (
        b"a dog on a beach\thttps://thumb7.shutt\xff(erstock.com/a.jpg\n"
        b"a cat on a sofa\thttps://thumb7.shutterstock.com/b.jpg\n"
    )
    drops = Counter()
    records = list(extract_tsv(io.BytesIO(lines), drops))
    assert [r.text for r in records] == ["a cat on a sofa"]
    assert drops == Counter({"invalid_url_encoding": 1})
    assert "invalid_url_encoding" in DROP_REASONS


def test_a_table_without_its_text_column_is_an_error_naming_the_file(tmp_path):
    """Issue 36, case 4: the job's one line must say which file lacks the column."""
    path = tmp_path / "no_text.parquet"
    pq.write_table(pa.table({"url": ["https://x.org/a.jpg"], "title": ["a dog"]}), path)
    with pytest.raises(ValueError, match=r"no_text\.parquet: none of the columns"):
        list(extract_file(str(path), "parquet", Counter()))
