"""Opening input URIs: local paths, file://, http(s):// and anything pyarrow.fs knows (s3://, gs://,
hdfs://, ...), so the same job reads a laptop sample or a whole crawl."""

from __future__ import annotations

from urllib.parse import urlsplit


def open_uri(uri: str):
    """A readable binary stream for `uri`. Raises OSError when it cannot be opened."""
    scheme = urlsplit(uri).scheme.lower()
    if scheme in ("", "file") or (len(scheme) == 1 and uri[1:3] in (":\\", ":/")):
        path = uri[len("file://") :] if scheme == "file" else uri
        return open(path, "rb")
    if scheme in ("http", "https"):
        import urllib.request

        try:
            return urllib.request.urlopen(uri, timeout=60)
        except Exception as error:  # noqa: BLE001 - URLError, HTTPError, timeouts
            raise OSError(f"cannot open {uri}: {error}") from error
    import pyarrow.fs

    try:
        filesystem, path = pyarrow.fs.FileSystem.from_uri(uri)
        return filesystem.open_input_stream(path)
    except Exception as error:  # noqa: BLE001 - pyarrow raises ArrowInvalid etc.
        raise OSError(f"cannot open {uri}: {error}") from error


def read_text_lines(uri: str) -> list[str]:
    """Lines of a (possibly gzipped) small text file such as a Common Crawl paths file."""
    import gzip

    with open_uri(uri) as stream:
        data = stream.read()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return [line.strip() for line in data.decode("utf-8").splitlines() if line.strip()]
