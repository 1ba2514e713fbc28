"""Open inputs named by URI (local path, file:, http(s):, s3:, gs:, hdfs:) on the driver or an
executor, so the same job reads a laptop sample or a whole crawl."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
from typing import BinaryIO
from urllib.parse import unquote, urlparse

_SCHEME_ALIASES = {"s3a": "s3", "s3n": "s3"}


def local_path(uri: str) -> str | None:
    """The filesystem path of a local URI or plain path, else None."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file") or len(parsed.scheme) == 1:  # "C:" on Windows
        return unquote(parsed.path) if parsed.scheme == "file" else uri
    return None


def remote_uri(uri: str) -> str:
    """A remote URI with Hadoop's s3a/s3n schemes read as s3 (pyarrow's and fsspec's name)."""
    scheme, rest = uri.split("://", 1)
    return f"{_SCHEME_ALIASES.get(scheme, scheme)}://{rest}"


def arrow_filesystem(uri: str):
    """pyarrow's filesystem for a remote URI and the path on it; raises where pyarrow has no
    driver for the scheme (the callers then try fsspec, or read through Spark)."""
    from pyarrow import fs

    return fs.FileSystem.from_uri(remote_uri(uri))


def open_binary(uri: str) -> BinaryIO:
    """A raw byte stream: local paths, http(s), pyarrow's filesystems (s3, gs, hdfs, ...), then
    fsspec for the schemes pyarrow lacks. Every failure to open is an OSError."""
    path = local_path(uri)
    if path is not None:
        return open(path, "rb")  # noqa: SIM115 - the caller closes it
    scheme, rest = uri.split("://", 1)
    if scheme.lower() in ("http", "https"):
        import urllib.request

        try:
            response = urllib.request.urlopen(uri, timeout=60)
        except Exception as error:  # noqa: BLE001 - URLError, HTTPError, timeouts
            raise OSError(f"cannot open {uri}: {error}") from error
        length = response.headers.get("Content-Length")
        if length is None or not length.isdigit():
            return response
        return io.BufferedReader(_LengthChecked(response, int(length), uri), 1 << 20)
    uri = remote_uri(uri)
    try:
        filesystem, inner = arrow_filesystem(uri)
        # the stored bytes (pyarrow would inflate a .gz name: WARC offsets are of the gzip
        # members), buffered (readers iterate lines, which pyarrow's own streams cannot)
        raw = filesystem.open_input_stream(inner, compression=None)
        return io.BufferedReader(raw, 1 << 20)
    except Exception:  # noqa: BLE001 - pyarrow has no driver for this scheme: try fsspec
        try:
            import fsspec

            return fsspec.open(uri, "rb").open()
        except Exception as error:  # noqa: BLE001
            raise OSError(f"cannot open {uri}: {error}") from error


def _causes(error: BaseException | None, limit: int = 8):
    """The error and the errors it was raised from (or while handling)."""
    while error is not None and limit:
        yield error
        error, limit = error.__cause__ or error.__context__, limit - 1


def is_not_found(error: BaseException) -> bool:
    """A missing file or object, or an HTTP 404, anywhere in the error's chain."""
    return any(
        isinstance(e, FileNotFoundError) or getattr(e, "code", None) == 404 for e in _causes(error)
    )


def is_transient(error: BaseException) -> bool:
    """Worth reading again: not a missing file, not an HTTP 4xx other than timeout (408) and
    throttling (429); a dropped connection, a 5xx, an object store's throttling are."""
    for e in _causes(error):
        if isinstance(e, FileNotFoundError):
            return False
        code = getattr(e, "code", None)
        if isinstance(code, int) and 400 <= code < 500 and code not in (408, 429):
            return False
    return True


def file_size(uri: str) -> int | None:
    """Bytes in the file at `uri` (None where the scheme cannot say: http without a HEAD)."""
    path = local_path(uri)
    if path is not None:
        return os.path.getsize(path)
    if uri.split("://", 1)[0].lower() in ("http", "https"):
        return None
    try:
        filesystem, inner = arrow_filesystem(uri)
    except Exception:  # noqa: BLE001 - pyarrow has no driver for this scheme: try fsspec
        import fsspec

        filesystem, inner = fsspec.core.url_to_fs(remote_uri(uri))
        return filesystem.size(inner)
    from pyarrow import fs

    info = filesystem.get_file_info(inner)
    return info.size if info.type == fs.FileType.File else None


class _LengthChecked(io.RawIOBase):
    """An HTTP body that raises OSError when the connection ends before Content-Length bytes:
    urllib returns a short read there, which a WARC reader would take for a truncated file."""

    def __init__(self, response, length: int, uri: str):
        self._response, self._left, self._uri = response, length, uri

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = self._response.readinto(buffer) if self._left else 0
        if n == 0 and self._left:
            raise OSError(f"{self._uri}: connection closed with {self._left} bytes unread")
        self._left -= n
        return n

    def close(self) -> None:
        self._response.close()
        super().close()


def read_text_lines(uri: str) -> list[str]:
    """Lines of a (possibly gzipped) small text file such as a Common Crawl paths file."""
    with open_binary(uri) as stream:
        data = stream.read()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return [line.strip() for line in data.decode("utf-8").splitlines() if line.strip()]


def open_decompressed(uri: str) -> BinaryIO:
    """A byte stream, decompressed by file suffix (.bz2, .xz, .gz), read lazily."""
    raw = open_binary(uri)
    name = uri.rsplit("/", 1)[-1].lower()
    if name.endswith(".bz2"):
        return bz2.open(raw, "rb")
    if name.endswith(".xz"):
        return lzma.open(raw, "rb")
    if name.endswith(".gz"):
        return gzip.open(raw, "rb")
    return raw


def expand(spark, patterns: list[str]) -> list[str]:
    """Glob each pattern with Hadoop's filesystem layer (any URI Spark can read), sorted."""
    jvm = spark.sparkContext._jvm
    conf = spark.sparkContext._jsc.hadoopConfiguration()
    found = set()
    for pattern in patterns:
        path = jvm.org.apache.hadoop.fs.Path(pattern)
        statuses = path.getFileSystem(conf).globStatus(path)
        if not statuses:
            raise FileNotFoundError(f"no input matches {pattern}")
        for status in statuses:
            if status.isFile():
                found.add(status.getPath().toString())
    return sorted(found)


def absolute(uri: str) -> str:
    """A path without a scheme made absolute on the driver (executors would resolve a relative
    one against their own working directories); URIs are left as they are."""
    if "://" in uri or uri.startswith("file:"):
        return uri
    return os.path.abspath(os.path.expanduser(uri))
