"""Issue 36: bad input gets one clear line or a counted drop, never a changed result.

The seven cases the issue found have their tests next to the stage they belong to (the table in
docs/operations.md section 6 names them); here are the unclear cases it listed, the sweep over
caption tables that looks for the next ones, and the check that a job's error line is not
preceded by a Spark traceback."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import hypothesis
import hypothesis.strategies as st
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from curation.alt_text.derive import derive_columns
from curation.alt_text.extract import MissingColumnError, extract_file
from tests.conftest import shared_path
from tests.curation_fixtures import wit_entries, write_metadata
from tests.test_job_errors import error_lines, load_job

ROOT = Path(__file__).resolve().parents[1]


def cc3m(n: int) -> list[tuple[str, str]]:
    """(caption, url) of the first n CC3M validation rows in ../shared/data."""
    lines = shared_path("cc3m_val_10k.tsv").read_text(encoding="utf-8").splitlines()[:n]
    return [tuple(line.split("\t")) for line in lines]


# ---------------------------------------------------------------- extraction, file by file


@pytest.mark.parametrize("name", ["a.parquet", "a.tsv", "a.tsv.gz", "a.jsonl", "a.warc.gz"])
def test_an_empty_input_file_is_counted_as_empty_not_unreadable(tmp_path, name):
    (tmp_path / name).write_bytes(b"")
    fmt = {"parquet": "parquet", "tsv": "tsv", "jsonl": "jsonl", "warc": "warc"}
    drops = Counter()
    assert list(extract_file(str(tmp_path / name), fmt[name.split(".")[1]], drops)) == []
    assert drops == {"empty_file": 1}
    # a gzip member holding nothing is not an empty file: it is a readable file with no rows
    if name == "a.tsv.gz":
        (tmp_path / name).write_bytes(gzip.compress(b""))
        drops = Counter()
        assert list(extract_file(str(tmp_path / name), "tsv", drops)) == [] and not drops


def test_a_jsonl_file_with_other_column_names_is_an_error_naming_the_file(tmp_path):
    """Parquet says so when its columns are misnamed; JSONL did not (exit 0, 0 rows)."""
    rows = cc3m(5)
    path = tmp_path / "renamed.jsonl"
    path.write_text("".join(json.dumps({"caption_x": t, "link": u}) + "\n" for t, u in rows))
    with pytest.raises(MissingColumnError) as raised:
        list(extract_file(str(path), "jsonl", Counter()))
    message = str(raised.value)
    assert message.startswith(f"{path}: none of the columns") and "caption_x" in message
    # rows that only omit a key are bad rows of a good file, counted
    path.write_text(
        json.dumps({"text": rows[0][0]})
        + "\n"
        + json.dumps({"text": rows[1][0], "url": rows[1][1]})
    )
    drops = Counter()
    assert [r.url for r in extract_file(str(path), "jsonl", drops)] == [rows[1][1]]
    assert drops == {"bad_row": 1}


# ---------------------------------------------------------------- the sweep over caption tables

GOOD_ROWS = cc3m(60)
NAMES = {  # mostly the names the job knows, sometimes one it does not
    "text": st.sampled_from(["text", "text", "text", "caption", "TEXT", "txt"]),
    "url": st.sampled_from(["url", "url", "url", "image_url", "link"]),
}
NO_LINE_BREAKS = st.characters(blacklist_categories=("Cs",), blacklist_characters="\t\n\r")
TEXTS = st.one_of(
    st.sampled_from([t for t, _ in GOOD_ROWS]),
    st.sampled_from(["", "   ", "IMG_2041.jpg", "https://example.org/a.jpg", "&amp; a cat"]),
    st.text(alphabet=NO_LINE_BREAKS, max_size=30),
    st.text(alphabet=NO_LINE_BREAKS, min_size=3000, max_size=3100),  # longer than --max-alt-chars
)
URLS = st.one_of(
    st.sampled_from([u for _, u in GOOD_ROWS]),
    st.sampled_from(["data:image/png;base64,iVBOR", "/images/a.jpg", "javascript:void(0)", ""]),
    st.text(alphabet=NO_LINE_BREAKS, max_size=30),
)
BAD_BYTES = st.sampled_from([b"\xff", b"\xc3(", b"\xed\xa0\x80", b"\x00"])


@st.composite
def caption_file(draw) -> dict:
    """One caption table: its format, column names and types, rows that may be null, numbers,
    bytes that are not UTF-8, or text the extractor must drop; sometimes no bytes at all."""
    fmt = draw(st.sampled_from(["parquet", "jsonl", "tsv"]))
    n = draw(st.integers(0, 12))
    spec = {
        "format": fmt,
        "empty": draw(st.booleans()) and draw(st.booleans()),
        "names": {k: draw(v) for k, v in NAMES.items()},
        "types": {
            k: draw(st.sampled_from(["string"] * 4 + ["int64", "binary", "null"])) for k in NAMES
        },  # fmt: skip
        "rows": [],
    }
    for _ in range(n):
        row = {}
        for key, values in (("text", TEXTS), ("url", URLS)):
            kind = draw(st.sampled_from(["value"] * 6 + ["null", "number", "bad_bytes", "missing"]))
            value = draw(values)
            if kind == "bad_bytes":
                value = value.encode() + draw(BAD_BYTES)
            row[key] = {"null": None, "number": draw(st.integers(-99, 99))}.get(kind, value)
            if kind == "missing":
                row[key] = KeyError
        spec["rows"].append(row)
    return spec


def write_caption_file(spec: dict, path: Path) -> int:
    """Writes `spec` in its format; the number of rows the file holds as its reader sees them."""
    if spec["empty"]:
        path.write_bytes(b"")
        return 0
    names, rows = spec["names"], spec["rows"]
    if spec["format"] == "parquet":
        columns = {}
        for key in ("text", "url"):
            kind = spec["types"][key]
            values = [r[key] for r in rows]
            columns[names[key]] = pa.array(
                [_as_type(v, kind) for v in values], {"string": pa.string(), "int64": pa.int64(),
                 "binary": pa.binary(), "null": pa.null()}[kind],
            )  # fmt: skip
        pq.write_table(pa.table(columns), path)
        return len(rows)
    lines = []
    for row in rows:
        if spec["format"] == "jsonl":
            obj = {names[k]: v for k, v in row.items() if v is not KeyError}
            line = json.dumps({k: v.decode("latin-1") if isinstance(v, bytes) else v
                               for k, v in obj.items()}).encode()  # fmt: skip
            if any(isinstance(v, bytes) for v in obj.values()):
                line = line.replace(b'"', b'"\xff', 1)  # not UTF-8: bad_json
        else:
            fields = [_tsv_field(row[k]) for k in ("text", "url") if row[k] is not KeyError]
            line = b"\t".join(fields)
        lines.append(line)
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return sum(1 for line in lines if line)  # an empty TSV line (no field at all) is no row


def _as_type(value, kind: str):
    if value is None or value is KeyError or kind == "null":
        return None
    if kind == "int64":
        return value if isinstance(value, int) else len(value)
    text = value if isinstance(value, str | bytes) else str(value)
    if kind == "binary":
        return text if isinstance(text, bytes) else text.encode()
    return text if isinstance(text, str) else text.decode("utf-8", "replace")


def _tsv_field(value) -> bytes:
    if value is None:
        return b""
    return value if isinstance(value, bytes) else str(value).encode()


def check_file(path: Path, spec: dict, rows: int) -> tuple[int, Counter] | None:
    """The file-level invariant; None when the file is refused with its one line."""
    drops = Counter()
    try:
        records = list(extract_file(str(path), spec["format"], drops))
    except MissingColumnError as error:
        assert str(error).startswith(f"{path}: ") and "\n" not in str(error)
        assert spec["format"] != "tsv"  # a TSV has no column names to get wrong
        return None
    if path.stat().st_size == 0:  # asked for, or a JSONL / TSV file of no rows
        assert drops == {"empty_file": 1} and not records
        return 0, drops
    assert len(records) + sum(drops.values()) == rows, (drops, len(records), rows)
    for record in records:
        assert isinstance(record.text, str) and record.text.strip() and "\ufffd" not in record.text
        assert record.url.startswith(("http://", "https://")) and "\ufffd" not in record.url
    if spec["format"] == "parquet" and spec["types"]["text"] != "string":
        assert not records  # numbers or bytes are never captions: each row is a bad_row
    return len(records), drops


@hypothesis.settings(
    max_examples=150, deadline=None, derandomize=True, database=None,
    suppress_health_check=list(hypothesis.HealthCheck),
)  # fmt: skip
@hypothesis.given(spec=caption_file())
def test_every_row_of_a_caption_file_is_extracted_or_counted(tmp_path_factory, spec):
    path = tmp_path_factory.mktemp("sweep") / f"captions.{spec['format']}"
    rows = write_caption_file(spec, path)
    check_file(path, spec, rows)


@hypothesis.settings(
    max_examples=3, deadline=None, derandomize=True, database=None,
    suppress_health_check=list(hypothesis.HealthCheck),
)  # fmt: skip
@hypothesis.given(specs=st.lists(caption_file(), min_size=2, max_size=4))
def test_the_extract_job_keeps_or_counts_every_row_or_stops_with_one_line(
    spark, tmp_path_factory, capsys, specs
):
    """The job over a folder of such files: every row is in alt_text/ or under a reason in
    drops/ (duplicates included), or the job exits with one line naming the file."""
    root = tmp_path_factory.mktemp("sweep_job")
    (root / "in").mkdir()
    total, refused = 0, []
    for i, spec in enumerate(specs):
        path = root / "in" / f"part{i}.{spec['format']}"
        rows = write_caption_file(spec, path)
        total += rows
        if check_file(path, spec, rows) is None:
            refused.append(path)
    capsys.readouterr()
    rc = load_job("extract_alt_text").main(
        ["--input", str(root / "in"), "--output", str(root / "out")]
    )
    err = capsys.readouterr().err
    lines = error_lines(err, "extract_alt_text")
    if refused:
        assert rc == 1 and len(lines) == 1, err
        assert any(str(path) in lines[0] for path in refused), lines
        return
    assert rc == 0 and not lines, err
    out = root / "out"
    written = (out / "alt_text").is_dir() and ds.dataset(out / "alt_text").count_rows()
    drops = pq.read_table(out / "drops").filter(pc.field("reason") != "empty_file")
    dropped = pc.sum(drops["count"]).as_py()  # an empty file is counted, but holds no row
    assert (written or 0) + (dropped or 0) == total


# ---------------------------------------------------------------- curation


def test_rows_with_a_null_lang_are_identified_not_counted_as_other(spark, tmp_path, capsys):
    """A caption table whose lang column is filled for some rows only: the null ones get a
    language from LID, as a table without the column does, instead of `no_metadata_language`."""
    rows = cc3m(300)
    langs = ["en" if i % 2 else None for i in range(len(rows))]
    table = pa.table({"url": [u for _, u in rows], "text": [t for t, _ in rows], "lang": langs})
    pq.write_table(table, tmp_path / "captions.parquet")
    write_metadata(tmp_path / "metadata", {"en": wit_entries([t for t, _ in rows], "en")})
    argv = ["--metadata", str(tmp_path / "metadata"), "--input", str(tmp_path / "captions.parquet"),
            "--output", str(tmp_path / "out"), "--t-en", "5"]  # fmt: skip
    assert load_job("curate").main(argv) == 0, capsys.readouterr().err
    run_json = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run_json["drops"]["no_metadata_language"] < 10  # CC3M is English: a few short ones
    curated = ds.dataset(str(tmp_path / "out" / "curated"), partitioning="hive").to_table()
    urls = set(curated.column("url").to_pylist())
    from_null = {u for (_, u), lang in zip(rows, langs) if lang is None} & urls
    assert len(from_null) > 50 and len(from_null) / len(urls) > 0.3


def test_derive_fills_only_the_null_rows_of_a_present_column():
    rows = cc3m(4)
    table = pa.table({
        "uid": ["given", None, "given2", None],
        "url": [u for _, u in rows],
        "page_url": pa.nulls(4, pa.string()),
        "text": [t for t, _ in rows],
        "lang": ["xx", None, "yy", None],
    })  # fmt: skip
    out = derive_columns(table, (), None)
    assert out.column("uid").to_pylist()[::2] == ["given", "given2"]
    assert out.column("lang").to_pylist()[::2] == ["xx", "yy"]  # kept as given, even if odd
    assert all(out.column("uid").to_pylist()) and out.column("lang").to_pylist()[1::2] == ["en"] * 2
    assert derive_columns(out, (), None) is out  # nothing null: nothing recomputed


# ---------------------------------------------------------------- metadata


@pytest.mark.parametrize("damage", ["empty", "corrupt"])
def test_a_dump_that_gives_no_article_stops_build_metadata_naming_it(
    spark, tmp_path, capsys, damage
):
    """An empty or corrupt dump used to build 0 entries and exit 0 ("0 languages")."""
    dump = tmp_path / "dumps" / "afwiki-20240101-pages-articles.xml.bz2"
    dump.parent.mkdir()
    dump.write_bytes(b"" if damage == "empty" else os.urandom(4096))
    argv = ["--languages", "af", "--wikipedia-dumps", str(dump), "--no-wordfreq",
            "--output", str(tmp_path / "out")]  # fmt: skip
    assert load_job("build_metadata").main(argv) == 2
    lines = error_lines(capsys.readouterr().err, "build_metadata")
    assert len(lines) == 1 and "af: no article read" in lines[0] and dump.name in lines[0], lines
    assert not (tmp_path / "out" / "metadata").exists()


# ---------------------------------------------------------------- no traceback before the line


def job_stderr(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args, "--master", "local[1]"], cwd=ROOT, capture_output=True, text=True,
        timeout=300, env={**os.environ, "PYSPARK_PYTHON": sys.executable},
    )  # fmt: skip


@pytest.mark.parametrize("job", ["curate", "extract_alt_text"])
def test_a_task_failure_prints_no_spark_traceback_before_the_error_line(tmp_path, job):
    """At the default log level a failing task (curate: the metadata of one language twice;
    extract: a JSONL file with other column names, both found where a task reads them) ends the
    job with its one line, and nothing of Spark's or the Python worker's traceback before it."""
    rows = cc3m(100)
    if job == "curate":
        table = pa.table({"url": [u for _, u in rows], "text": [t for t, _ in rows]})
        pq.write_table(table.append_column("lang", pa.array(["en"] * 100)), tmp_path / "in.parquet")
        write_metadata(tmp_path / "metadata", {"en": wit_entries([t for t, _ in rows], "en")})
        (first,) = (tmp_path / "metadata" / "lang=en").glob("*.parquet")
        (first.parent / ("copy-" + first.name)).write_bytes(first.read_bytes())
        args = ["--metadata", str(tmp_path / "metadata"), "--input", str(tmp_path / "in.parquet")]
        named = "metadata/lang=en"
    else:
        (tmp_path / "in").mkdir()
        (tmp_path / "in" / "good.tsv").write_text("".join(f"{t}\t{u}\n" for t, u in rows))
        renamed = "".join(json.dumps({"caption_x": t, "link": u}) + "\n" for t, u in rows)
        (tmp_path / "in" / "renamed.jsonl").write_text(renamed)
        args, named = ["--input", str(tmp_path / "in")], "renamed.jsonl"
    result = job_stderr([f"jobs/{job}.py", *args, "--output", str(tmp_path / "out")])
    assert result.returncode == 1, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith(f"{job}: error: ") and named in lines[-1], lines[-5:]
    assert len(error_lines(result.stderr, job)) == 1
    # Spark's one-line "Task 0 in stage 2.0 failed 1 times; aborting job" may stay: no trace
    for marker in ("Traceback", "PythonException", "\tat ", "Caused by", 'File "', "Lost task"):
        assert marker not in result.stderr, result.stderr[-3000:]
