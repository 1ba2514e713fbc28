"""A loopback HTTP server for the demo and the tests: `make demo` and `--serve-local` point
every curated URL at one of scikit-image's bundled photographs served on 127.0.0.1, so shard
export runs end to end without the network."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import io
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image

from curation.core.jobs import ExportError


def localize_urls(
    table: pa.Table, base_url: str, names: list[str], variants: bool = False
) -> pa.Table:
    """Demo helper: point every URL at one of `names` under `base_url` (chosen by URL hash), or
    with `variants` at its own variant of one of them (`variant_image`)."""
    if not names:
        raise ExportError("no images to serve")
    digests = [hashlib.sha1(u.encode()).hexdigest() for u in table["url"].to_pylist()]
    if variants:
        urls = [f"{base_url}/{VARIANT_PREFIX}{d}.jpg" for d in digests]
    else:
        urls = [f"{base_url}/{names[int(d[:8], 16) % len(names)]}" for d in digests]
    return table.set_column(table.schema.get_field_index("url"), "url", pa.array(urls, pa.string()))


# ---------------------------------------------------------------- loopback server


VARIANT_PREFIX = "variant/"


def variant_image(photo: Image.Image, digest: str, size: int = 256) -> bytes:
    """A JPEG of its own for each digest, made from `photo`: a square crop (50-90% of the
    shorter side, anywhere), resized to `size`, turned or flipped (7 in 8), its brightness
    modulated by an 8 x 8 grid of factors in [0.3, 1]. The demo serves one per URL so that the
    image filter's de-duplication has distinct pictures to keep. Two crops of one photograph
    can overlap enough to be near-copies, and are then de-duplicated (docs/filtering.md gives
    the demo's count)."""
    rng = np.random.default_rng(int(digest[:16], 16))
    width, height = photo.size
    side = int(min(width, height) * rng.uniform(0.5, 0.9))
    x, y = rng.integers(0, width - side + 1), rng.integers(0, height - side + 1)
    crop = photo.crop((x, y, x + side, y + side)).resize((size, size), Image.BICUBIC)
    if rng.integers(8):
        crop = crop.transpose(int(rng.integers(7)))
    grid = (rng.uniform(0.3, 1.0, (8, 8)) * 255).astype(np.uint8)
    field = np.asarray(Image.fromarray(grid).resize((size, size), Image.BICUBIC), np.float32)
    pixels = np.asarray(crop, np.float32) * (field[..., None] / 255.0)
    out = io.BytesIO()
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(out, "JPEG", quality=90)
    return out.getvalue()


class _Handler(http.server.SimpleHTTPRequestHandler):
    extra_headers: dict[str, dict[str, str]] = {}
    delays: dict[str, float] = {}
    stopping: threading.Event
    seen: list | None = None
    photos: list | None = None  # decoded photographs that /variant/DIGEST.jpg is made from

    def do_GET(self):  # noqa: N802 (http.server's naming)
        if self.seen is not None:
            self.seen.append((self.path, self.headers.get("User-Agent", "")))
        delay = self.delays.get(self.path, 0.0)
        if delay:
            self.stopping.wait(delay)
        if self.photos and self.path.startswith("/" + VARIANT_PREFIX):
            self.send_variant(self.path[len(VARIANT_PREFIX) + 1 :].split(".")[0])
            return
        super().do_GET()

    def send_variant(self, digest: str) -> None:
        try:
            index = int(digest[:8], 16) % len(self.photos)
        except ValueError:
            self.send_error(404)
            return
        body = variant_image(self.photos[index], digest[8:] or "0")
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

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
    variants_of: list[str] | None = None,
) -> Iterator[str]:
    """Serve `root` on 127.0.0.1 (a free port) and yield its base URL.

    `headers` / `delays` are keyed by request path ("/name.jpg"); `seen`, if given, collects
    (path, User-Agent) per request. With `variants_of` (image names under `root`), it also
    answers /variant/DIGEST.jpg with `variant_image` of one of them. The server stops when the
    block exits or after `lifetime_s`, whichever is first, so a hung client cannot keep it
    alive.
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
            "photos": [load_rgb(Path(root) / n) for n in variants_of] if variants_of else None,
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


def load_rgb(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


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
