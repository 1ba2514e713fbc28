"""A loopback web server that fails the way web servers and object stores do, chosen by the
requested file's stem: `gone.*` answers 404, `down.*` 503 always, `busy.*` 503 to its first
request, and `cut.*` drops the connection after one third, then two thirds, of the body on its
first two requests; everything else is served whole."""

from __future__ import annotations

import contextlib
import http.server
import threading
from collections import Counter
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def flaky_server(body_for: Callable[[str], bytes]) -> Iterator[tuple[str, Counter]]:
    """(base URL, requests per file name); `body_for(name)` is the file's bytes."""
    requests: Counter = Counter()

    class Flaky(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            name = self.path.rsplit("/", 1)[-1]
            stem = name.split(".", 1)[0]
            requests[name] += 1
            if stem == "gone":
                return self.send_error(404)
            if stem == "down" or (stem == "busy" and requests[name] == 1):
                return self.send_error(503)
            body = body_for(name)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if stem == "cut" and requests[name] < 3:
                self.wfile.write(body[: len(body) * requests[name] // 3])
                self.wfile.flush()
                self.connection.shutdown(2)
                return
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Flaky)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requests
    finally:
        server.shutdown()
