"""A registry that sends the loader elsewhere (307 to presigned S3 URLs) is still hostile
input: a redirect target is validated before it is remembered, forgotten when it fails,
never named with its query (a presigned URL carries its signature there), and any failure
is a typed error."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from modelseal.errors import Error
from modelseal.loader.fetch import Fetcher, RetryPolicy

DATA = bytes(range(256)) * 64
SECRET = "X-Amz-Signature=deadbeef0123456789"


class _Handler(BaseHTTPRequestHandler):
    locations: ClassVar[dict[str, str]] = {}
    hits: ClassVar[dict[str, int]] = {}

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        self.hits[path] = self.hits.get(path, 0) + 1
        if path in self.locations:
            self.send_response(307)
            self.send_header("Location", self.locations[path].format(port=self.server.server_port))
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path == "/denied":
            self.send_response(403)
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            first, last = (int(v) for v in self.headers["Range"][6:].split("-"))
            body = DATA[first : last + 1]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {first}-{last}/{len(DATA)}")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    _Handler.locations = {
        "/bad-port": "http://127.0.0.1:99999/x",
        "/expired": "/denied?" + SECRET,
        "/good": "/data?" + SECRET,
    }
    _Handler.hits = {}
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_port}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def _fetcher() -> Fetcher:
    return Fetcher(retry=RetryPolicy(attempts=3), sleep=lambda _s: None)


def test_a_redirect_is_followed_and_remembered(server: str) -> None:
    with _fetcher() as f:
        for start in (0, 100, 200):
            buf = bytearray(50)
            f.read_range(server + "/good", start, memoryview(buf))
            assert bytes(buf) == DATA[start : start + 50]
    assert _Handler.hits["/good"] == 1  # later ranges went to the target directly
    assert _Handler.hits["/data"] == 3


def test_an_unusable_location_is_a_typed_error_and_not_remembered(server: str) -> None:
    with _fetcher() as f:
        for _ in range(2):
            with pytest.raises(Error):
                f.read_range(server + "/bad-port", 0, memoryview(bytearray(10)))
        assert f._moved == {}
    assert _Handler.hits["/bad-port"] >= 2  # the registry is asked again each time


def test_a_failing_target_never_shows_its_signature(
    server: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with _fetcher() as f, pytest.raises(Error) as failure:
        f.read_range(server + "/expired", 0, memoryview(bytearray(10)))
    assert SECRET not in str(failure.value)
    assert SECRET not in caplog.text
    assert _Handler.hits["/expired"] >= 2  # each failure sent the loader back for a new URL
