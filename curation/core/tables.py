"""The one home of the table format: Parquet or Delta tables (and the small files beside them)
by URI, with pyarrow's filesystems, on the driver and the executors.

Every stage asks here whether a table is Delta, reads it (through its Delta log when it has one:
an overwritten Delta table keeps its old files), writes files atomically, starts and finishes a
table (`_SUCCESS`). Spark reads a table through `read_table` only where Spark does the I/O (the
curation job's `--input-reader spark`). `s3a://` and `s3n://` are read as `s3://`.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import posixpath
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from curation.core.spark import HadoopFS, MissingConnector
from curation.core.uris import arrow_filesystem, local_path

HIVE_LANG = ds.partitioning(pa.schema([("lang", pa.string())]), flavor="hive")


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """pyarrow's filesystem for a URI (s3a/s3n as s3) and the path on it."""
    path = local_path(uri)
    if path is not None:
        return pafs.LocalFileSystem(), str(Path(path).resolve())
    return arrow_filesystem(uri)


def _info(uri: str) -> pafs.FileInfo:
    fs, path = filesystem(uri)
    return fs.get_file_info(path)


def exists(uri: str) -> bool:
    return _info(uri).type != pafs.FileType.NotFound


def is_dir(uri: str) -> bool:
    return _info(uri).type == pafs.FileType.Directory


def is_delta(uri: str) -> bool:
    """Whether the table at `uri` is a Delta table (it has a `_delta_log/` folder)."""
    return is_dir(f"{uri.rstrip('/')}/_delta_log")


def read_text(uri: str) -> str | None:
    """A small text file (a marker, a summary), or None when there is none."""
    fs, path = filesystem(uri)
    try:
        with fs.open_input_stream(path, compression=None) as stream:
            return stream.read().decode("utf-8")
    except FileNotFoundError:
        return None
    except OSError:
        if not exists(uri):
            return None
        raise


def write_text(uri: str, text: str) -> None:
    """A small text file, never seen half-written (`published`)."""
    write_bytes(uri, text.encode("utf-8"))


def write_bytes(uri: str, data: bytes) -> None:
    with published(uri) as sink:
        sink.write(data)


@contextlib.contextmanager
def published(uri: str):
    """An output stream for `uri` whose file appears whole or not at all, so that a reader, or
    a retried task writing the same name, never sees half a file.

    Where a rename is atomic (local disks, HDFS) the file is written beside the target under a
    hidden name and renamed into place; on failure the hidden file is removed (`finish_table`
    sweeps what a killed process leaves). An object store has no rename (pyarrow copies and
    deletes), but a PUT of an object is atomic: the bytes are spooled to a local temporary file
    and uploaded to the final name once complete, and nothing is uploaded on failure. Every name
    this project publishes is deterministic, so a retry overwrites with the same content."""
    fs, path = filesystem(uri)
    folder, name = path.rsplit("/", 1)
    if not renames_atomically(fs):
        with _spooled_upload(fs, path) as sink:
            yield sink
        return
    temporary = f"{folder}/.{name}.{uuid.uuid4().hex}.tmp"
    try:
        fs.create_dir(folder, recursive=True)
        with fs.open_output_stream(temporary, compression=None) as sink:
            yield sink
        fs.move(temporary, path)
    except BaseException:
        try:
            fs.delete_file(temporary)
        except (OSError, pa.ArrowException):
            pass
        raise


def renames_atomically(fs: pafs.FileSystem) -> bool:
    """Local disks and HDFS rename a file in one step; S3, GCS and Azure copy it."""
    return isinstance(fs, pafs.LocalFileSystem | pafs.HadoopFileSystem) or (
        isinstance(fs, pafs.SubTreeFileSystem) and renames_atomically(fs.base_fs)
    )


@contextlib.contextmanager
def _spooled_upload(fs: pafs.FileSystem, path: str):
    """A local temporary file for the caller to write; uploaded to `path` in one go once the
    caller is done, so that the object store never holds a partial object."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="curation-upload-") as folder:
        local = f"{folder}/part"
        with pa.OSFile(local, "wb") as sink:
            yield sink
        pafs.copy_files(local, path, destination_filesystem=fs)


def delete(uri: str) -> None:
    """Delete a file or a folder and everything under it; nothing there is fine."""
    fs, path = filesystem(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.Directory:
        fs.delete_dir(path)
    elif info.type == pafs.FileType.File:
        fs.delete_file(path)


def partition_values(uri: str, column: str = "lang") -> list[str]:
    """The values of a table's `column=` folders, sorted. Raises FileNotFoundError when there
    is no table at `uri`."""
    fs, path = filesystem(uri)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        raise FileNotFoundError(uri)
    prefix = f"{column}="
    return sorted(
        info.base_name[len(prefix) :]
        for info in fs.get_file_info(pafs.FileSelector(path))
        if info.type == pafs.FileType.Directory and info.base_name.startswith(prefix)
    )


def list_files(uri: str, suffix: str, missing_ok: bool = False) -> list[str]:
    """The files directly in folder `uri` whose name ends with `suffix`, sorted, as URIs like
    `uri` (an s3:// folder gives s3:// files). A missing folder raises FileNotFoundError, or
    gives [] with `missing_ok`."""
    fs, path = filesystem(uri)
    selector = pafs.FileSelector(path, allow_not_found=missing_ok)
    files = sorted(
        info.path
        for info in fs.get_file_info(selector)
        if info.type == pafs.FileType.File and info.base_name.endswith(suffix)
    )
    scheme = f"{uri.split('://', 1)[0]}://" if "://" in uri else ""
    return [scheme + f for f in files]


def content_summary(uri: str) -> list[int]:
    """[bytes, files, folders, newest modification time in ms] of everything under `uri`: what
    identifies an input for `--resume`."""
    fs, path = filesystem(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(uri)
    if info.type == pafs.FileType.File:
        infos = [info]
    else:
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    files = [i for i in infos if i.type == pafs.FileType.File]
    folders = sum(i.type == pafs.FileType.Directory for i in infos)
    newest = max((i.mtime_ns or 0 for i in files), default=0) // 1_000_000
    return [sum(i.size or 0 for i in files), len(files), folders, newest]


def read_partition(table_uri: str, lang: str, columns: list[str]) -> pa.Table:
    """One `lang=` partition of a hive-partitioned Parquet (or converted Delta) table."""
    uri = f"{table_uri.rstrip('/')}/lang={lang}"
    fs, path = filesystem(uri)
    try:
        dataset = ds.dataset(path, filesystem=fs, format="parquet", ignore_prefixes=[".", "_"])
        return dataset.to_table(columns=columns)
    except (OSError, pa.ArrowException) as error:
        raise ValueError(f"cannot read table partition {uri}: {error}") from None


def read_arrow(uri: str, columns: list[str]) -> pa.Table:
    """A whole table on the driver (small ones: counts, thresholds), by its Delta log when it
    has one; `lang=` folders as strings."""
    return dataset(uri).to_table(columns=columns)


def dataset(uri: str, partitioning=HIVE_LANG) -> ds.Dataset:
    """A table as a pyarrow dataset: a Delta table's current files (through its log), else the
    Parquet files under `uri` (hidden `.`/`_` names skipped, `lang=` folders as strings)."""
    fs, path = filesystem(uri)
    if is_delta(uri):
        from deltalake import DeltaTable

        return DeltaTable(uri if "://" in uri else path).to_pyarrow_dataset()
    return ds.dataset(
        path, filesystem=fs, format="parquet", partitioning=partitioning,
        ignore_prefixes=[".", "_"],
    )  # fmt: skip


@functools.lru_cache(maxsize=1)
def spark_has_delta(spark) -> bool:
    try:
        spark._jvm.java.lang.Class.forName("io.delta.sql.DeltaSparkSessionExtension")
        return True
    except Exception:  # noqa: BLE001 - py4j wraps ClassNotFoundException
        return False


def read_table(spark, uri: str, schema: str | None = None):
    """A Parquet or Delta table as a Spark DataFrame, where Spark does the I/O (Delta without
    delta-spark's jars: its current files, listed by delta-rs).

    `schema` (DDL, partition columns included) is for tables this project wrote: it skips the
    Spark job that infers the schema from file footers on every read."""
    uri = uri.rstrip("/")
    try:
        found, delta, folder = exists(uri), is_delta(uri), is_dir(uri)
    except (pa.ArrowException, OSError, ValueError):  # a filesystem only Hadoop's layer reaches
        hadoop = HadoopFS(spark)
        found, delta = hadoop.exists(uri), hadoop.exists(f"{uri}/_delta_log")
        folder = hadoop.is_dir(uri)
    if not found:
        raise FileNotFoundError(uri)
    try:
        return _spark_reader(spark, uri, schema, delta, folder)
    except Exception as error:  # noqa: BLE001 - py4j's wrapping of Hadoop's exception
        if MissingConnector.caused(error):
            raise MissingConnector(uri) from None
        raise


def _spark_reader(spark, uri: str, schema: str | None, delta: bool, folder: bool):
    reader = spark.read.schema(schema) if schema else spark.read
    if not delta:
        reader = reader.option("basePath", uri) if folder else reader
        return reader.parquet(uri)
    if spark_has_delta(spark):
        return reader.format("delta").load(uri)
    from deltalake import DeltaTable

    files = DeltaTable(uri).file_uris()
    if not files:
        raise ValueError(f"Delta table {uri} has no data files")
    return reader.option("basePath", uri).parquet(*files)


def _convert_to_delta(spark, uri: str, partition_by: list[str] | None) -> None:
    """A folder of Parquet files (hive-partitioned by `partition_by`) made a Delta table in
    place: by delta-spark's CONVERT TO DELTA when its jars are loaded, else by delta-rs."""
    if spark is not None and spark_has_delta(spark):
        columns = ", ".join(f"`{c}` STRING" for c in partition_by or [])
        spark.sql(
            f"CONVERT TO DELTA parquet.`{uri}`"
            + (f" PARTITIONED BY ({columns})" if columns else "")
        )
        return
    from deltalake import Field, Schema, convert_to_deltalake

    partitions = None
    if partition_by:
        partitions = Schema([Field(c, "string") for c in partition_by])
    convert_to_deltalake(
        uri, partition_by=partitions, partition_strategy="hive" if partitions else None
    )


def write_parquet(uri: str, pieces: list[pa.Table], plain: tuple[str, ...] = ()) -> None:
    """One Parquet file from an executor (snappy, as Spark writes), each piece its own row
    groups, published whole (`published`): a reader, or a retried task writing the same name,
    never sees half a file. `plain` columns (unique
    strings) get no dictionary pages and no statistics."""
    schema = pieces[0].schema
    encoded = [f.name for f in schema if f.name not in plain]
    with published(uri) as sink:
        with pq.ParquetWriter(
            sink, schema, compression="snappy", use_dictionary=encoded, write_statistics=encoded
        ) as writer:
            for piece in pieces:
                writer.write_table(piece)


def check_writable(uri: str) -> None:
    """Raise unless pyarrow (as on the executors) can create and delete a file under `uri`."""
    fs, path = filesystem(uri)
    parent = path.rstrip("/")
    while parent and parent != "/":  # say which path is in the way, not "errno 20"
        if fs.get_file_info(parent).type == pafs.FileType.File:
            raise NotADirectoryError(f"Parent path is not a directory: {parent}")
        parent = posixpath.dirname(parent)
    probe = f"{path.rstrip('/')}/_pyarrow_write_probe"
    fs.create_dir(path, recursive=True)
    with fs.open_output_stream(probe, compression=None) as sink:
        sink.write(b"")
    fs.delete_file(probe)


def start_table(uri: str) -> None:
    """An empty folder for a table that executors write with `write_parquet` (a rerun's old
    files, or a Delta log, must not survive)."""
    fs, path = filesystem(uri)
    fs.delete_dir_contents(path, missing_dir_ok=True)
    fs.create_dir(path, recursive=True)


def finish_table(uri: str, fmt: str, partition_by: list[str] | None, spark=None) -> None:
    """Complete a table that executors wrote with `write_parquet`: drop what failed attempts
    left (hidden temporary files), convert to Delta if asked, then write `_SUCCESS`."""
    fs, path = filesystem(uri)
    for info in fs.get_file_info(pafs.FileSelector(path, recursive=True)):
        if info.type == pafs.FileType.File and info.base_name.endswith(".tmp"):
            fs.delete_file(info.path)
    if fmt == "delta":
        _convert_to_delta(spark, uri, partition_by)
    write_success(uri)


def write_success(uri: str) -> None:
    """The `_SUCCESS` marker that says a table (or a run) is complete."""
    write_text(posixpath.join(uri.rstrip("/"), "_SUCCESS"), "")


def has_success(uri: str) -> bool:
    return exists(posixpath.join(uri.rstrip("/"), "_SUCCESS"))


def code_version(root: Path | None = None) -> str:
    """The package version plus a digest of the library's source: what `--resume` compares.

    A digest of every `curation/**/*.py` (paths relative to the package, so the checkout's
    location does not matter) rather than a git commit: a docs-only commit does not invalidate
    finished stages, a code change in any subpackage does, and a cluster without git works.
    """
    from importlib.metadata import PackageNotFoundError, version

    try:
        release = version("metaclip-pipeline")
    except PackageNotFoundError:
        release = "unknown"
    root = root or Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for source in sorted(root.rglob("*.py")):
        digest.update(source.relative_to(root).as_posix().encode())
        digest.update(source.read_bytes())
    return f"{release}+{digest.hexdigest()[:12]}"
