"""A real HTTP/1.1 blob server on 127.0.0.1 for fetch tests, with scripted faults.

Serves byte strings with Range (206), HEAD and 404, and can be told to answer the next
requests with an HTTP status or to cut the connection after N body bytes, which is what a
registry restart looks like from the loader.
"""

from __future__ import annotations

import re
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.hostile_http import serving

_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


@dataclass
class Faults:
    """Scripted faults, consumed one per request (thread-safe).

    ``only_path`` aims the faults at one blob, and a cut is only spent on a body longer
    than the cut: which request gets which fault is then fixed, however the loader's
    threads interleave (faults landing on whichever request came first made the retry
    count of a test depend on scheduling).
    """

    statuses: list[int] = field(default_factory=list)
    cut_after: list[int] = field(default_factory=list)
    ignore_range: bool = False
    only_path: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _aimed_at(self, path: str) -> bool:
        return self.only_path is None or path == self.only_path

    def next_status(self, path: str) -> int | None:
        with self.lock:
            return self.statuses.pop(0) if self.statuses and self._aimed_at(path) else None

    def next_cut(self, path: str, body_len: int) -> int | None:
        with self.lock:
            if self.cut_after and self._aimed_at(path) and self.cut_after[0] < body_len:
                return self.cut_after.pop(0)
            return None


class BlobServer:
    def __init__(self, *, tls: tuple[str, str] | None = None) -> None:
        self.blobs: dict[str, bytes] = {}
        self.faults = Faults()
        self.requests: list[tuple[str, str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                return

            def _serve(self, body: bool) -> None:
                server.requests.append((self.command, self.path, self.headers.get("Range")))
                status = server.faults.next_status(self.path)
                if status is not None:
                    self.send_response(status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                blob = server.blobs.get(self.path)
                if blob is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                start, end, code = 0, len(blob) - 1, 200
                header = self.headers.get("Range")
                if header and not server.faults.ignore_range:
                    m = _RANGE.match(header)
                    assert m is not None
                    start = int(m.group(1))
                    end = min(int(m.group(2)) if m.group(2) else len(blob) - 1, len(blob) - 1)
                    if start >= len(blob):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(blob)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    code = 206
                payload = blob[start : end + 1]
                self.send_response(code)
                self.send_header("Content-Length", str(len(payload)))
                self.send_header("Accept-Ranges", "bytes")
                if code == 206:
                    self.send_header("Content-Range", f"bytes {start}-{end}/{len(blob)}")
                self.end_headers()
                if not body:
                    return
                cut = server.faults.next_cut(self.path, len(payload))
                if cut is not None:
                    self.wfile.write(payload[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                self.wfile.write(payload)

            def do_GET(self) -> None:
                self._serve(True)

            def do_HEAD(self) -> None:
                self._serve(False)

        class QuietServer(ThreadingHTTPServer):
            def handle_error(self, request: object, client_address: object) -> None:
                return  # clients hanging up mid-body are part of the tests

        self.httpd = QuietServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        scheme = "http"
        if tls is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*tls)
            self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
            scheme = "https"
        self.url = f"{scheme}://127.0.0.1:{self.httpd.server_address[1]}"

    @contextmanager
    def running(self) -> Iterator[BlobServer]:
        with serving(self.httpd):
            yield self
