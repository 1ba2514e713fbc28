"""The curation job's input read by pyarrow in the tasks: listing, splits, partition values."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from curation.curate.input_splits import list_input, read_split
from tests.curation_fixtures import caption_rows

COLUMNS = ["uid", "url", "page_url", "text", "lang"]


@pytest.fixture(scope="module")
def captions():
    rows = caption_rows(2000, ("ko",))
    return pa.table(
        {
            "url": [r[0] for r in rows],
            "page_url": pa.array([r[1] for r in rows], pa.string()),
            "text": [r[2] for r in rows],
            "lang": [r[3] for r in rows],
        }
    )


def read_all(files, columns=COLUMNS) -> pa.Table:
    return pa.concat_tables(read_split(split, columns) for split in files.splits)


def test_a_large_file_is_cut_into_splits_that_read_each_row_group_once(captions, tmp_path):
    path = tmp_path / "big.parquet"
    pq.write_table(captions, path, row_group_size=100)  # 23 row groups
    size = path.stat().st_size
    files = list_input(str(path), split_bytes=size // 7)
    assert len(files.splits) >= 5
    got = read_all(files)
    assert got.column("text").to_pylist() == captions.column("text").to_pylist()
    assert got.column("uid").null_count == got.num_rows, "a column the input lacks is null"
    starts = [s.start for s in files.splits]
    assert starts == sorted(starts) and starts[0] == 0
    assert sum(s.length for s in files.splits) == size


def test_folders_skip_hidden_files_and_give_partition_values(captions, tmp_path):
    root = tmp_path / "alt_text"
    for lang in ("en", "ko"):
        part = captions.filter(pa.compute.equal(captions.column("lang"), lang)).drop_columns("lang")
        (root / f"lang={lang}").mkdir(parents=True)
        pq.write_table(part, root / f"lang={lang}" / "part-0.snappy.parquet")
        pq.write_table(part.slice(0, 3), root / f"lang={lang}" / ".part-0.crc")
    (root / "_SUCCESS").write_text("")
    (root / "_temporary" / "0").mkdir(parents=True)
    pq.write_table(captions.slice(0, 5), root / "_temporary" / "0" / "part-9.parquet")
    (root / "no_extension").write_bytes((root / "lang=ko" / "part-0.snappy.parquet").read_bytes())
    files = list_input(str(root), split_bytes=2**20)
    assert [json.loads(s.partition) for s in files.splits] == [{"lang": "en"}, {"lang": "ko"}, {}]
    assert sorted(files.columns) == ["lang", "page_url", "text", "url"]
    got = read_all(files)
    langs = got.column("lang").to_pylist()
    assert langs.count("en") == captions.column("lang").to_pylist().count("en")
    assert langs.count(None) == langs.count("ko"), "the file outside lang= has no lang"
    assert got.num_rows == len(captions) + langs.count(None)


def test_delta_input_by_its_log_and_unsupported_features_fall_back(captions, tmp_path):
    from deltalake import write_deltalake

    table = tmp_path / "delta"
    write_deltalake(str(table), captions, partition_by=["lang"])
    write_deltalake(str(table), captions.slice(0, 10), partition_by=["lang"], mode="overwrite")
    files = list_input(str(table), split_bytes=2**20)
    got = read_all(files)
    assert got.num_rows == 10, "only the files of the current version"
    assert sorted(got.column("text").to_pylist()) == sorted(
        captions.slice(0, 10).column("text").to_pylist()
    )
    vectors = tmp_path / "deletion_vectors"
    write_deltalake(str(vectors), captions, configuration={"delta.enableDeletionVectors": "true"})
    assert list_input(str(vectors), split_bytes=2**20) is None


def test_unreadable_inputs(tmp_path):
    assert list_input("nosuchscheme://bucket/alt_text", split_bytes=2**20) is None
    with pytest.raises(FileNotFoundError):
        list_input(str(tmp_path / "missing"), split_bytes=2**20)
    (tmp_path / "empty").mkdir()
    assert list_input(str(tmp_path / "empty"), split_bytes=2**20).splits == []
    (tmp_path / "broken").mkdir()
    pq.write_table(
        pa.table({"url": ["https://a.org/x.jpg"], "text": ["x"]}), tmp_path / "broken" / "a"
    )
    (tmp_path / "broken" / "b").write_bytes(b"PAR1" + b"\0" * 100)
    files = list_input(str(tmp_path / "broken"), split_bytes=2**20)  # schema of the first file
    assert read_split(files.splits[0], COLUMNS).num_rows == 1
    with pytest.raises(ValueError, match="cannot read input file .*broken/b"):
        read_split(files.splits[1], COLUMNS)
    with pytest.raises(ValueError, match="cannot read input file .*broken/b"):
        list_input(str(tmp_path / "broken" / "b"), split_bytes=2**20)


def test_split_columns_are_strings(tmp_path):
    table = pa.table(
        {
            "url": pa.array(["https://a.org/x.jpg"]).dictionary_encode(),
            "text": pa.array(["a cat"], pa.large_string()),
            "lang": pa.array(["en"]),
        }
    )
    pq.write_table(table, tmp_path / "t.parquet")
    got = read_all(list_input(str(tmp_path / "t.parquet"), split_bytes=2**20))
    assert got.schema.types == [pa.string()] * len(COLUMNS)
    assert got.column("url").to_pylist() == ["https://a.org/x.jpg"]
    assert np.all(np.array(got.column("uid").is_null()))


def test_a_column_of_numbers_is_an_error_naming_the_file_not_captions(captions, tmp_path):
    """Issue 36, case 2: one file with `text` as int64 beside files with text: its split fails
    with one line naming the file and the column; the text files still read as before."""
    root = tmp_path / "mixed"
    root.mkdir()
    pq.write_table(captions.slice(0, 500), root / "part-0.parquet")
    numbers = captions.slice(500, 100).set_column(2, "text", pa.array(np.arange(100), pa.int64()))
    pq.write_table(numbers, root / "part-1.parquet")
    files = list_input(str(root), 1 << 20)
    good, bad = sorted(files.splits, key=lambda s: s.path)
    assert read_split(good, COLUMNS).num_rows == 500
    with pytest.raises(ValueError, match=r"part-1\.parquet: column text is int64, not text"):
        read_split(bad, COLUMNS)
    # dictionary-encoded and all-null text columns are text
    encoded = captions.slice(0, 10).set_column(
        2, "text", pc.dictionary_encode(captions["text"][:10])
    )
    pq.write_table(encoded, root / "part-2.parquet")
    nulls = captions.slice(0, 10).set_column(2, "text", pa.nulls(10))
    pq.write_table(nulls, root / "part-3.parquet")
    splits = sorted(list_input(str(root), 1 << 20).splits, key=lambda s: s.path)
    assert (
        read_split(splits[2], COLUMNS).column("text").to_pylist()
        == captions["text"][:10].to_pylist()
    )
    assert read_split(splits[3], COLUMNS).column("text").null_count == 10


def test_text_written_as_bytes_reads_as_text_and_bad_bytes_name_the_file(captions, tmp_path):
    """Parquet without the UTF8 annotation (binary columns) is text; bytes that are not UTF-8
    are an error naming the file, not a garbled caption."""
    texts = captions["text"][:20].to_pylist()
    raw = captions.slice(0, 20).set_column(
        2, "text", pa.array([t.encode() for t in texts], pa.binary())
    )
    pq.write_table(raw, tmp_path / "raw.parquet")
    (split,) = list_input(str(tmp_path / "raw.parquet"), 1 << 20).splits
    assert read_split(split, COLUMNS).column("text").to_pylist() == texts
    bad = raw.set_column(2, "text", pa.array([b"\xff\xfe"] * 20, pa.binary()))
    pq.write_table(bad, tmp_path / "bad.parquet")
    (split,) = list_input(str(tmp_path / "bad.parquet"), 1 << 20).splits
    with pytest.raises(ValueError, match=r"bad\.parquet: column text"):
        read_split(split, COLUMNS)
    # a string column (UTF8 annotation) holding such bytes: Parquet readers take it as it is
    data = b"ok\xff\xfe"
    broken = pa.Array.from_buffers(
        pa.string(),
        20,
        [None, pa.py_buffer(np.r_[0, np.full(20, len(data))].astype(np.int32)), pa.py_buffer(data)],
    )
    pq.write_table(raw.set_column(2, "text", broken), tmp_path / "annotated.parquet")
    assert pq.read_table(tmp_path / "annotated.parquet").schema.field("text").type == pa.string()
    (split,) = list_input(str(tmp_path / "annotated.parquet"), 1 << 20).splits
    with pytest.raises(ValueError, match=r"annotated\.parquet: column text: .*UTF8"):
        read_split(split, COLUMNS)
