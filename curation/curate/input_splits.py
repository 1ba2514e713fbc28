"""The curation job's input as splits that Python tasks read with pyarrow.

The driver lists the input (a Parquet file or folder, hive-partitioned or not, or a Delta table
whose files can be read as plain Parquet) and cuts large files into byte ranges. A task reads
the row groups whose middle byte falls in its range, the rule Spark and Hadoop use, so every
row group is read by exactly one split. Input that pyarrow cannot list or read (a filesystem
it lacks, Delta with deletion vectors or column mapping) gets None, and the job reads it
through Spark instead.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from curation.core import tables
from curation.core.tables import filesystem

log = logging.getLogger("curate")

SPLIT_SCHEMA = "path string, start long, length long, partition string"


@dataclass(frozen=True)
class Split:
    path: str  # a URI or local path
    start: int
    length: int  # -1: the whole file
    partition: str  # JSON object of the file's partition values ({"lang": "en"})

    def row(self) -> tuple:
        return (self.path, self.start, self.length, self.partition)


@dataclass(frozen=True)
class InputFiles:
    splits: list[Split]
    columns: list[str]  # of the first file, partition columns included


def list_input(uri: str, split_bytes: int) -> InputFiles | None:
    """The splits of the input at `uri`, or None when pyarrow cannot read it (see module doc).
    Raises FileNotFoundError when there is nothing at `uri`."""
    try:
        fs, root = filesystem(uri)
        info = fs.get_file_info(root)
    except (pa.ArrowException, OSError, ValueError) as error:
        log.info("input %s: not readable with pyarrow (%s), read through Spark", uri, error)
        return None
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(uri)
    if info.type == pafs.FileType.File:
        files = [(root, info.size, {})]
    elif tables.is_delta(uri):
        files = _delta_files(uri, root)
        if files is None:
            return None
    else:
        files = _parquet_files(fs, root)
    if not files:
        return InputFiles([], [])
    first, _, partition = files[0]
    try:
        columns = [*pq.read_schema(first, filesystem=fs).names, *partition]
    except (OSError, pa.ArrowException) as error:
        raise ValueError(f"cannot read input file {first}: {error}") from None
    splits = []
    for path, size, partition in files:
        values = json.dumps(partition, sort_keys=True)
        pieces = size // split_bytes if size >= 2 * split_bytes else 1
        if pieces == 1:
            splits.append(Split(_uri(uri, path), 0, -1, values))
            continue
        bounds = [size * i // pieces for i in range(pieces + 1)]
        for start, stop in zip(bounds[:-1], bounds[1:]):
            splits.append(Split(_uri(uri, path), start, stop - start, values))
    return InputFiles(splits, columns)


def _uri(input_uri: str, path: str) -> str:
    """A path of the input's filesystem as a URI the executors can open."""
    if "://" in input_uri and not input_uri.startswith("file:"):
        return f"{input_uri.split('://', 1)[0]}://{path}"
    return path


def _parquet_files(fs: pafs.FileSystem, root: str) -> list[tuple[str, int, dict]]:
    """Data files under a folder, in path order, as Spark lists them: names starting with '.'
    or '_' (at any depth) are not data, and `key=value` folders are partition values."""
    files = []
    for info in fs.get_file_info(pafs.FileSelector(root, recursive=True)):
        if info.type != pafs.FileType.File:
            continue
        parts = info.path[len(root) :].strip("/").split("/")
        if any(part.startswith((".", "_")) for part in parts):
            continue
        partition = dict(unquote(p).split("=", 1) for p in parts[:-1] if "=" in p)
        files.append((info.path, info.size, partition))
    return sorted(files)


def _delta_files(uri: str, root: str) -> list[tuple[str, int, dict]] | None:
    """The current data files of a Delta table, when they are plain Parquet (reader protocol 1:
    no deletion vectors, no column mapping); partition values from the log."""
    from deltalake import DeltaTable

    table = DeltaTable(uri if "://" in uri else root)
    if table.protocol().min_reader_version > 1:
        log.info("input %s: Delta reader features pyarrow lacks, read through Spark", uri)
        return None
    columns = table.metadata().partition_columns
    files = []
    for action in pa.table(table.get_add_actions(flatten=True)).to_pylist():
        partition = {c: action[f"partition.{c}"] for c in columns}
        path = f"{root}/{unquote(action['path'])}"
        files.append((path, int(action["size_bytes"]), partition))
    return sorted(files)


def read_split(split: Split, columns: list[str]) -> pa.Table:
    """`columns` of the split's rows as strings: stored ones, partition values, else nulls."""
    fs, path = filesystem(split.path)
    try:
        with fs.open_input_file(path) as handle:
            parquet = pq.ParquetFile(handle)
            groups = _row_groups(parquet.metadata, split.start, split.length)
            stored = [c for c in columns if c in parquet.schema_arrow.names]
            table = parquet.read_row_groups(groups, columns=stored, use_threads=False)
    except (OSError, pa.ArrowException) as error:
        raise ValueError(f"cannot read input file {split.path}: {error}") from None
    partition = json.loads(split.partition)
    out = []
    for name in columns:
        if name in stored:
            column = table.column(name)
            if not _is_text(column.type):  # never a number turned into a caption
                raise ValueError(
                    f"input file {split.path}: column {name} is {column.type}, not text "
                    "(files of one input must agree on their columns' types)"
                )
        elif partition.get(name) is not None:
            column = pa.array([partition[name]] * table.num_rows, pa.string())
        else:
            column = pa.nulls(table.num_rows, pa.string())
        try:
            unchecked = name in stored and not _is_bytes(column.type)  # a cast checks bytes
            column = column.cast(pa.string())
            if unchecked:  # Parquet readers do not check the UTF-8 of string columns
                column.validate(full=True)
        except pa.ArrowInvalid as error:  # bytes that are not UTF-8
            raise ValueError(f"input file {split.path}: column {name}: {error}") from None
        out.append(column)
    return pa.table(out, names=columns)


def _is_text(kind: pa.DataType) -> bool:
    """Strings, or bytes (Parquet written without the UTF8 annotation: checked as cast)."""
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    view = getattr(pa.types, "is_string_view", lambda _: False)(kind)
    strings = pa.types.is_string(kind) or pa.types.is_large_string(kind) or view
    return strings or _is_bytes(kind) or pa.types.is_null(kind)


def _is_bytes(kind: pa.DataType) -> bool:
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    return pa.types.is_binary(kind) or pa.types.is_large_binary(kind)


def _row_groups(metadata: pq.FileMetaData, start: int, length: int) -> list[int]:
    if length < 0:
        return list(range(metadata.num_row_groups))
    chosen = []
    for i in range(metadata.num_row_groups):
        group = metadata.row_group(i)
        chunks = [group.column(j) for j in range(group.num_columns)]
        first = min(
            c.dictionary_page_offset if c.has_dictionary_page else c.data_page_offset
            for c in chunks
        )
        middle = first + sum(c.total_compressed_size for c in chunks) // 2
        if start <= middle < start + length:
            chosen.append(i)
    return chosen
