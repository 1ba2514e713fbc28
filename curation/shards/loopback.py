"""A loopback HTTP server for the demo and the tests: `make demo` and `--serve-local` point
every curated URL at one of scikit-image's bundled photographs served on 127.0.0.1, so shard
export runs end to end without the network."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa

from curation.core.jobs import ExportError


def localize_urls(table: pa.Table, base_url: str, names: list[str]) -> pa.Table:
    """Demo helper: point every URL at one of `names` under `base_url` (chosen by URL hash)."""
    if not names:
        raise ExportError("no images to serve")
    urls = [
        f"{base_url}/{names[int(hashlib.sha1(u.encode()).hexdigest()[:8], 16) % len(names)]}"
        for u in table["url"].to_pylist()
    ]
    return table.set_column(table.schema.get_field_index("url"), "url", pa.array(urls, pa.string()))


# ---------------------------------------------------------------- loopback server


class _Handler(http.server.SimpleHTTPRequestHandler):
    extra_headers: dict[str, dict[str, str]] = {}
    delays: dict[str, float] = {}
    stopping: threading.Event
    seen: list | None = None

    def do_GET(self):  # noqa: N802 (http.server's naming)
        if self.seen is not None:
            self.seen.append((self.path, self.headers.get("User-Agent", "")))
        delay = self.delays.get(self.path, 0.0)
        if delay:
            self.stopping.wait(delay)
        super().do_GET()

    def end_headers(self):
        for name, value in self.extra_headers.get(self.path, {}).items():
            self.send_header(name, value)
        super().end_headers()

    def log_message(self, format, *args):  # noqa: A002
        pass


class _QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # the default 5 drops connects when img2dataset opens 100+ at once

    def handle_error(self, request, client_address):
        pass  # clients that time out or refuse a body hang up mid-response: expected here


@contextlib.contextmanager
def serve_directory(
    root: str | Path,
    headers: dict[str, dict[str, str]] | None = None,
    delays: dict[str, float] | None = None,
    lifetime_s: float = 600.0,
    seen: list | None = None,
) -> Iterator[str]:
    """Serve `root` on 127.0.0.1 (a free port) and yield its base URL.

    `headers` / `delays` are keyed by request path ("/name.jpg"); `seen`, if given, collects
    (path, User-Agent) per request. The server stops when the block exits or after
    `lifetime_s`, whichever is first, so a hung client cannot keep it alive.
    """
    stopping = threading.Event()
    handler = type(
        "Handler",
        (_Handler,),
        {
            "extra_headers": headers or {},
            "delays": delays or {},
            "stopping": stopping,
            "seen": seen,
        },
    )

    def make_handler(*args, **kwargs):
        return handler(*args, directory=str(root), **kwargs)

    server = _QuietServer(("127.0.0.1", 0), make_handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    timer = threading.Timer(lifetime_s, server.shutdown)
    timer.daemon = True
    timer.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        stopping.set()
        timer.cancel()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp")
# Photographs shipped inside scikit-image, CC0 or public domain per skimage.data's docstrings.
BUNDLED_PHOTOS = (
    "astronaut.png",
    "brick.png",
    "camera.png",
    "cell.png",
    "chelsea.png",
    "clock_motion.png",
    "coffee.png",
    "grass.png",
    "gravel.png",
    "hubble_deep_field.jpg",
    "retina.jpg",
    "rocket.jpg",
)


def bundled_photo_dir() -> Path:
    """scikit-image's data folder (holds BUNDLED_PHOTOS); scikit-image is in the dev extra."""
    try:
        import skimage.data
    except ImportError as err:
        raise ExportError(
            "the bundled photographs need scikit-image (pip install scikit-image)"
        ) from err
    return Path(skimage.data.__file__).parent


def image_names(root: str | Path) -> list[str]:
    root = Path(root)
    with contextlib.suppress(ExportError):
        if root.resolve() == bundled_photo_dir().resolve():
            return list(BUNDLED_PHOTOS)
    return sorted(p.name for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
