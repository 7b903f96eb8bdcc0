"""A hostile HTTP peer on 127.0.0.1: scripted answers, endless or trickling bodies.

Each route is a function of the request handler; the helpers below build the scripts the
client-side tests need (a fixed answer, a body that never ends, one that trickles). Bodies
are close-delimited (HTTP/1.0, no ``Content-Length``) unless a length is given, so the only
thing that stops a client is its own cap or deadline. ``sent`` counts the body bytes that
went out per path.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Script = Callable[[BaseHTTPRequestHandler], None]


def answer(
    status: int, body: bytes, headers: Mapping[str, str] | None = None, *, length: bool = True
) -> Script:
    """A fixed answer (with ``Content-Length`` unless ``length`` is false)."""

    def script(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(status)
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        if length:
            handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    return script


def endless(
    total: int,
    *,
    status: int = 200,
    chunk: int = 1 << 20,
    delay: float = 0.0,
    declared: int | None = None,
    headers: Mapping[str, str] | None = None,
    sent: dict[str, int] | None = None,
) -> Script:
    """Up to ``total`` body bytes (JSON-ish whitespace after a ``{``), ``chunk`` at a time,
    ``delay`` seconds apart; stops when the client hangs up. ``declared`` sets a
    ``Content-Length`` (a lie, if it differs from ``total``)."""
    block = b" " * chunk

    def script(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        if declared is not None:
            handler.send_header("Content-Length", str(declared))
        handler.end_headers()
        out = 0
        try:
            handler.wfile.write(b"{")
            while out < total:
                n = min(chunk, total - out)
                handler.wfile.write(block[:n])
                handler.wfile.flush()
                out += n
                if sent is not None:
                    sent[handler.path] = sent.get(handler.path, 0) + n
                if delay:
                    time.sleep(delay)
        except OSError:
            return  # the client gave up: what the test wants

    return script


class HostileServer:
    """Threaded HTTP/1.0 server; ``routes`` maps ``"METHOD /path"`` (or ``"METHOD"`` for
    any path) to a script. Unknown routes answer 404."""

    def __init__(self, routes: Mapping[str, Script] | None = None) -> None:
        self.routes: dict[str, Script] = dict(routes or {})
        self.sent: dict[str, int] = {}
        self.hits: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, format: str, *args: object) -> None:
                return

            def _route(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                #: the request body, for scripts that answer according to it
                self.request_body = self.rfile.read(length) if length else b""
                key = f"{self.command} {self.path.split('?', 1)[0]}"
                server.hits.append(key)
                script = server.routes.get(key) or server.routes.get(self.command)
                if script is None:
                    answer(404, b'{"detail": "no such route"}')(self)
                else:
                    script(self)

            def do_GET(self) -> None:
                self._route()

            def do_POST(self) -> None:
                self._route()

            def do_PUT(self) -> None:
                self._route()

            def do_DELETE(self) -> None:
                self._route()

            def do_HEAD(self) -> None:
                self._route()

        class QuietServer(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: object, client_address: object) -> None:
                return  # clients hanging up mid-body are the point of these tests

        self.httpd = QuietServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    @contextmanager
    def running(self) -> Iterator[HostileServer]:
        with serving(self.httpd):
            yield self


@contextmanager
def serving(httpd: ThreadingHTTPServer) -> Iterator[ThreadingHTTPServer]:
    """Serve ``httpd`` from a daemon thread for the duration of the block, then close it."""
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()


def padded_sealed_blob(header_len: int, *, path: str = "w.bin") -> bytes:
    """A structurally valid sealed file of an empty plaintext whose header is padded with
    JSON whitespace to ``header_len`` bytes (what a hostile registry can serve for free)."""
    salt = "A" * 43
    members = (
        f'{{"alg":"AES-256-GCM","key_id":"models/m/v1","path":"{path}","salt":"{salt}",'
        '"segment_size":4096,"size":0}'
    ).encode()
    header = members + b" " * (header_len - len(members))
    preamble = b"\x89MSEAL\r\n" + (1).to_bytes(2, "big") + header_len.to_bytes(4, "big")
    return preamble + header + bytes(32) + bytes(16)  # commitment, the one (empty) tag


def model_info(base: str, files: int) -> dict[str, Any]:
    """Model info of a v1 model whose ``files`` blobs live at ``base/f<i>``."""
    return {
        "id": "m",
        "url": base + "/",
        "format": "modelseal/v1",
        "encrypted": True,
        "kbs": "trustee",
        "kbs_url": "http://127.0.0.1:9",
        "key_id": "models/m/v1",
        "model_digest": "sha256:" + "0" * 64,
        "manifest_url": base + "/manifest",
        "files": [
            {"path": f"f{i}.bin", "url": f"{base}/f{i}", "sealed_size": 0} for i in range(files)
        ],
    }


def _b64(doc: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()


TOKEN = f"{_b64({'alg': 'ES256'})}.{_b64({'iat': 1, 'exp': 1000, 'jti': 't'})}.c2ln"


def hostile_kbs(resource: Any) -> HostileServer:
    """A KBS that completes the RCAR handshake (it does not check evidence) and answers the
    resource request with ``resource``."""
    challenge = json.dumps({"nonce": "A" * 43 + "=", "extra-params": ""}).encode()
    return HostileServer(
        {
            "POST /kbs/v0/auth": answer(200, challenge, {"Set-Cookie": "kbs-session-id=abc"}),
            "POST /kbs/v0/attest": answer(200, json.dumps({"token": TOKEN}).encode()),
            "GET": resource,
        }
    )
