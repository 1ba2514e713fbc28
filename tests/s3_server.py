"""An S3-compatible server on 127.0.0.1 for the suite: moto's server mode, in a thread.

The jobs find it the way they find any S3 endpoint, through the standard variables of the AWS
credential chain (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...). Those must be in the environment
before the suite's one Spark session starts (its JVM, and the Python workers the JVM forks, take
the environment they start with), so `configure_environment` runs when conftest is imported and
reserves the port; the server itself starts only when a test asks for the `s3` fixture.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

BUCKET = "lake"
# distinctive, so that a test can grep every log and output for it
SECRET = "s3-fixture-secret-4f1d9c2b7a"
ACCESS_KEY = "s3-fixture-key"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def configure_environment() -> str:
    """The AWS_* variables for a server on a free port of 127.0.0.1; returns its endpoint.
    They replace a developer's own (and their profiles and config files are hidden), so that no
    test can reach a real bucket with real credentials."""
    endpoint = os.environ.get("CURATION_TEST_S3_ENDPOINT") or f"http://127.0.0.1:{_free_port()}"
    for key in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_ROLE_ARN",
                "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ENDPOINT_URL_S3"):  # fmt: skip
        os.environ.pop(key, None)
    settings = {
        "CURATION_TEST_S3_ENDPOINT": endpoint,
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        "AWS_ALLOW_HTTP": "true",  # delta-rs: plain http to the loopback endpoint
        "AWS_EC2_METADATA_DISABLED": "true",  # no instance-role lookups against 169.254.x
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }
    os.environ.update(settings)
    return endpoint


@dataclass
class S3Server:
    """The running server: its endpoint, one bucket, and every request line it served."""

    endpoint: str
    bucket: str = BUCKET
    requests: list[str] = field(default_factory=list)

    def uri(self, *parts: str) -> str:
        return "s3://" + "/".join([self.bucket, *(p.strip("/") for p in parts)])

    def upload(self, local: Path, *parts: str) -> str:
        """A local file or folder copied under `parts`; returns its s3:// URI."""
        import pyarrow.fs as pafs

        s3, _ = pafs.FileSystem.from_uri(self.uri())
        target = "/".join([self.bucket, *parts])
        pafs.copy_files(str(local), target, destination_filesystem=s3)
        return self.uri(*parts)

    def keys(self, *parts: str) -> list[str]:
        """Every object key under `parts`, relative to it, sorted."""
        import pyarrow.fs as pafs

        s3, _ = pafs.FileSystem.from_uri(self.uri())
        base = "/".join([self.bucket, *parts]).rstrip("/")
        infos = s3.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
        return sorted(i.path[len(base) + 1 :] for i in infos if i.type == pafs.FileType.File)

    def download(self, *parts: str, to: Path) -> Path:
        """A folder under `parts` copied to a local folder (to read it with local tools)."""
        import pyarrow.fs as pafs

        s3, _ = pafs.FileSystem.from_uri(self.uri())
        pafs.copy_files("/".join([self.bucket, *parts]), str(to), source_filesystem=s3)
        return to


class _RequestLog(logging.Handler):
    """werkzeug's access log lines ('"PUT /lake/key HTTP/1.1" 200 -'), kept instead of printed."""

    def __init__(self, lines: list[str]):
        super().__init__(logging.INFO)
        self.lines = lines

    def emit(self, record: logging.LogRecord) -> None:  # under the handler's own lock
        self.lines.append(record.getMessage())


def start(endpoint: str):
    """Start moto's threaded server at `endpoint` with an empty bucket; returns (server, stop)."""
    from moto.server import ThreadedMotoServer

    host, port = endpoint.rsplit("//", 1)[1].rsplit(":", 1)
    server = S3Server(endpoint)
    access = logging.getLogger("werkzeug")
    access.handlers[:] = [_RequestLog(server.requests)]
    access.setLevel(logging.INFO)
    access.propagate = False
    moto = ThreadedMotoServer(ip_address=host, port=int(port), verbose=False)
    moto.start()
    import boto3

    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=server.bucket)
    return server, moto.stop
