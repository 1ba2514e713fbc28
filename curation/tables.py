"""Reading and writing the job's tables (Parquet or Delta) by URI, on the driver and executors."""

from __future__ import annotations

import functools
import hashlib
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from curation.uris import local_path


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """pyarrow's filesystem for a URI (s3a/s3n as s3) and the path on it."""
    path = local_path(uri)
    if path is not None:
        return pafs.LocalFileSystem(), str(Path(path).resolve())
    scheme, rest = uri.split("://", 1)
    return pafs.FileSystem.from_uri(f"{ {'s3a': 's3', 's3n': 's3'}.get(scheme, scheme) }://{rest}")


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
    has one (an overwritten Delta table keeps its old files); `lang=` folders as strings."""
    fs, path = filesystem(uri)
    if fs.get_file_info(f"{path}/_delta_log").type == pafs.FileType.Directory:
        from deltalake import DeltaTable

        return pa.table(DeltaTable(uri if "://" in uri else path).to_pyarrow_table(columns=columns))
    partitioning = ds.partitioning(pa.schema([("lang", pa.string())]), flavor="hive")
    dataset = ds.dataset(
        path, filesystem=fs, format="parquet", partitioning=partitioning, ignore_prefixes=[".", "_"]
    )
    return dataset.to_table(columns=columns)


def is_delta(spark, uri: str) -> bool:
    return HadoopFS(spark).exists(f"{uri.rstrip('/')}/_delta_log")


@functools.lru_cache(maxsize=1)
def spark_has_delta(spark) -> bool:
    try:
        spark._jvm.java.lang.Class.forName("io.delta.sql.DeltaSparkSessionExtension")
        return True
    except Exception:  # noqa: BLE001 - py4j wraps ClassNotFoundException
        return False


def read_table(spark, uri: str, schema: str | None = None):
    """A Parquet or Delta table as a DataFrame (Delta without jars: current files via delta-rs).

    `schema` (DDL, partition columns included) is for tables this project wrote: it skips the
    Spark job that infers the schema from file footers on every read."""
    uri = uri.rstrip("/")
    fs = HadoopFS(spark)
    if not fs.exists(uri):
        raise FileNotFoundError(uri)
    reader = spark.read.schema(schema) if schema else spark.read
    if not is_delta(spark, uri):
        reader = reader.option("basePath", uri) if fs.is_dir(uri) else reader
        return reader.parquet(uri)
    if spark_has_delta(spark):
        return reader.format("delta").load(uri)
    from deltalake import DeltaTable

    files = DeltaTable(uri).file_uris()
    if not files:
        raise ValueError(f"Delta table {uri} has no data files")
    return reader.option("basePath", uri).parquet(*files)


def write_table(
    df, uri: str, fmt: str, partition_by: list[str] | None, options: dict | None = None
) -> None:
    """Overwrite a table. Delta without jars: write Parquet, then convert it in place (delta-rs).
    `options` go to the Parquet writer (e.g. parquet.enable.dictionary#COLUMN)."""
    native_delta = fmt == "delta" and spark_has_delta(df.sparkSession)
    writer = df.write.mode("overwrite").format("delta" if native_delta else "parquet")
    writer = writer.options(**(options or {}))
    if partition_by:
        writer = writer.partitionBy(*partition_by)
    if fmt == "delta" and not native_delta:
        HadoopFS(df.sparkSession).delete(uri)  # an old _delta_log must not survive the rewrite
    writer.save(uri)
    if fmt == "delta" and not native_delta:
        _convert_to_delta(df.sparkSession, uri, partition_by)


def _convert_to_delta(spark, uri: str, partition_by: list[str] | None) -> None:
    """A folder of Parquet files (hive-partitioned by `partition_by`) made a Delta table in
    place: by delta-spark's CONVERT TO DELTA when its jars are loaded, else by delta-rs."""
    if spark_has_delta(spark):
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
    groups. Written beside the target under a hidden name, then renamed: a reader, or a retried
    task writing the same name, never sees half a file. `plain` columns (unique strings) get
    no dictionary pages and no statistics."""
    fs, path = filesystem(uri)
    folder, name = path.rsplit("/", 1)
    temporary = f"{folder}/.{name}.{uuid.uuid4().hex}.tmp"
    schema = pieces[0].schema
    encoded = [f.name for f in schema if f.name not in plain]
    try:
        fs.create_dir(folder, recursive=True)
        with fs.open_output_stream(temporary) as sink:
            with pq.ParquetWriter(
                sink,
                schema,
                compression="snappy",
                use_dictionary=encoded,
                write_statistics=encoded,
            ) as writer:
                for piece in pieces:
                    writer.write_table(piece)
        fs.move(temporary, path)
    except BaseException:
        try:
            fs.delete_file(temporary)
        except (OSError, pa.ArrowException):
            pass
        raise


def check_writable(uri: str) -> None:
    """Raise unless pyarrow (as on the executors) can create and delete a file under `uri`."""
    fs, path = filesystem(uri)
    probe = f"{path.rstrip('/')}/_pyarrow_write_probe"
    fs.create_dir(path, recursive=True)
    with fs.open_output_stream(probe) as sink:
        sink.write(b"")
    fs.delete_file(probe)


def start_table(uri: str) -> None:
    """An empty folder for a table that executors write with `write_parquet` (a rerun's old
    files, or a Delta log, must not survive)."""
    fs, path = filesystem(uri)
    fs.delete_dir_contents(path, missing_dir_ok=True)
    fs.create_dir(path, recursive=True)


def finish_table(spark, uri: str, fmt: str, partition_by: list[str] | None) -> None:
    """Complete a table that executors wrote with `write_parquet`: drop what failed attempts
    left (hidden temporary files), convert to Delta if asked, then write `_SUCCESS`."""
    fs, path = filesystem(uri)
    for info in fs.get_file_info(pafs.FileSelector(path, recursive=True)):
        if info.type == pafs.FileType.File and info.base_name.endswith(".tmp"):
            fs.delete_file(info.path)
    if fmt == "delta":
        _convert_to_delta(spark, uri, partition_by)
    HadoopFS(spark).write_text(f"{uri.rstrip('/')}/_SUCCESS", "")


class HadoopFS:
    """Small file operations on any URI Spark can write (local, hdfs, s3a, ...), from the driver."""

    def __init__(self, spark):
        self._jvm = spark.sparkContext._jvm
        self._conf = spark.sparkContext._jsc.hadoopConfiguration()

    def _path(self, uri: str):
        path = self._jvm.org.apache.hadoop.fs.Path(uri)
        return path, path.getFileSystem(self._conf)

    def exists(self, uri: str) -> bool:
        path, fs = self._path(uri)
        return fs.exists(path)

    def check_writable(self, uri: str) -> None:
        """Raise OSError (one line) unless a file can be created under `uri`: fail before work."""
        probe = f"{uri.rstrip('/')}/_write_probe"
        try:
            self.write_text(probe, "")
            self.delete(probe)
        except Exception as error:  # noqa: BLE001 - py4j wraps the Java IOException
            lines = [line.strip() for line in str(error).splitlines() if line.strip()]
            reason = next(
                (line for line in lines if "Exception" in line), lines[0] if lines else ""
            )
            raise OSError(f"cannot write to output {uri}: {reason.lstrip(': ')}") from None

    def is_dir(self, uri: str) -> bool:
        path, fs = self._path(uri)
        return fs.exists(path) and fs.getFileStatus(path).isDirectory()

    def delete(self, uri: str) -> None:
        path, fs = self._path(uri)
        if fs.exists(path):
            fs.delete(path, True)

    def write_text(self, uri: str, text: str) -> None:
        """Write via a temporary file and a rename, so readers never see half a file."""
        path, fs = self._path(uri)
        fs.setWriteChecksum(False)  # no .crc side files next to run.json / _SUCCESS
        tmp = self._jvm.org.apache.hadoop.fs.Path(uri + ".tmp")
        stream = fs.create(tmp, True)
        stream.write(bytearray(text.encode("utf-8")))
        stream.close()
        if fs.exists(path):
            fs.delete(path, False)
        if not fs.rename(tmp, path):
            raise OSError(f"could not write {uri}")

    def read_text(self, uri: str) -> str | None:
        path, fs = self._path(uri)
        if not fs.exists(path):
            return None
        io = self._jvm.java.io
        reader = io.BufferedReader(io.InputStreamReader(fs.open(path), "UTF-8"))
        try:
            lines = []
            while (line := reader.readLine()) is not None:
                lines.append(line)
            return "\n".join(lines)
        finally:
            reader.close()

    def partition_values(self, uri: str, column: str) -> list[str]:
        path, fs = self._path(uri)
        if not fs.exists(path):
            raise FileNotFoundError(uri)
        prefix = f"{column}="
        return sorted(
            status.getPath().getName()[len(prefix) :]
            for status in fs.listStatus(path)
            if status.isDirectory() and status.getPath().getName().startswith(prefix)
        )

    def glob_bytes(self, pattern: str) -> int:
        """Total size of the files a glob URI matches (0 when none)."""
        path, fs = self._path(pattern)
        statuses = fs.globStatus(path) or []
        return sum(fs.getContentSummary(st.getPath()).getLength() for st in statuses)

    def content_summary(self, uri: str) -> list[int]:
        """[bytes, files, directories, newest modification time] under a URI: input identity."""
        path, fs = self._path(uri)
        if not fs.exists(path):
            raise FileNotFoundError(uri)
        summary = fs.getContentSummary(path)
        newest = 0
        files = fs.listFiles(path, True)
        while files.hasNext():
            newest = max(newest, files.next().getModificationTime())
        return [summary.getLength(), summary.getFileCount(), summary.getDirectoryCount(), newest]


def code_version() -> str:
    """The package version plus a digest of the library's source: what `--resume` compares.

    A digest of `curation/*.py` rather than a git commit, so a docs-only commit does not
    invalidate finished stages, an uncommitted code change does, and a cluster without git works.
    """
    from importlib.metadata import PackageNotFoundError, version

    try:
        package = version("metaclip-pipeline")
    except PackageNotFoundError:
        package = "unknown"
    digest = hashlib.sha256()
    for source in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(source.name.encode())
        digest.update(source.read_bytes())
    return f"{package}+{digest.hexdigest()[:12]}"


def image_uid_column(url, page_url):
    """Column expression: the image uid of (url, page_url); null for URLs that are not http(s)."""
    from pyspark.sql import functions as F

    @F.udf("string")
    def uid(url, page_url):
        from curation.extract import image_uid

        if url is None:
            return None
        try:
            return image_uid(url, page_url)
        except ValueError:
            return None

    return uid(url, page_url)


def with_language(df, model_path: str | None):
    """Adds `lang` (and `lid_label`, `lid_score`) by fastText LID, in batches on the executors."""
    from pyspark.sql.types import DoubleType, StringType, StructField, StructType

    # a new StructType: StructType.add mutates in place, and df.schema is the frame's own
    schema = StructType(
        [
            *df.schema.fields,
            StructField("lid_label", StringType()),
            StructField("lid_score", DoubleType()),
            StructField("lang", StringType()),
        ]
    )

    def identify(batches):
        from curation.lid import get_identifier

        identifier = get_identifier(model_path)
        for batch in batches:
            texts = ["" if t is None else t for t in batch.column("text").to_pylist()]
            labels, scores, langs = identifier.predict(texts)
            yield pa.RecordBatch.from_arrays(
                [
                    *batch.columns,
                    pa.array(labels, pa.string()),
                    pa.array(scores, pa.float64()),
                    pa.array(langs, pa.string()),
                ],
                schema=pa.schema(
                    [
                        *batch.schema,
                        ("lid_label", pa.string()),
                        ("lid_score", pa.float64()),
                        ("lang", pa.string()),
                    ]
                ),
            )

    return df.mapInArrow(identify, schema)
