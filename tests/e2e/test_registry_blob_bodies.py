"""Blob bodies on a real ``modelseal registry serve`` (uvicorn): mapped over HTTP, streamed
in large reads over HTTPS.

Bytes, ranges, keep-alive and conditional requests must be exact, over HTTP and HTTPS,
with bodies of several reads and ranges across read and page boundaries; a
damaged object must never turn into a full-length body of wrong bytes. What a body costs
the registry in CPU is measured by ``bench/registry_bench.py``, not asserted here.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from modelseal.registry.blob_response import MAP_CHUNK, STREAM_CHUNK
from tests.conftest import self_signed_cert
from tests.e2e.test_registry_http import RegistryServer, start_registry

pytestmark = pytest.mark.e2e

SIZE = 5 * (1 << 20) + 4093  # not a multiple of the page size
PATH = "/blobs/zc/v1/w.sealed"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    server = start_registry(tmp_path_factory.mktemp("registry-bodies") / "data")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def data(registry: RegistryServer) -> bytes:
    blob = os.urandom(SIZE)
    r = httpx.put(registry.url + PATH, content=blob, headers=registry.auth())
    assert r.status_code == 201, r.text
    return blob


def _port(server: RegistryServer) -> int:
    return int(server.url.rsplit(":", 1)[1])


def _object(server: RegistryServer, sha256: str) -> Path:
    return server.data_dir / "blobs" / "objects" / sha256[:2] / sha256


def _span(header: str, size: int) -> tuple[int, int]:
    """[start, end) of a single ``bytes=`` range (the test's own, independent reading)."""
    first, _, last = header.removeprefix("bytes=").partition("-")
    if not first:
        return max(0, size - int(last)), size
    return int(first), min(size, int(last) + 1) if last else size


RANGES = [
    "bytes=0-0",
    f"bytes={SIZE - 1}-{SIZE - 1}",
    f"bytes={SIZE - 1}-",
    "bytes=4095-4096",
    "bytes=4000-200000",
    "bytes=65530-65545",
    "bytes=65535-131072",
    "bytes=1048575-3145728",
    f"bytes={SIZE - 65537}-",
    "bytes=0-",
    "bytes=-1",
    "bytes=-4097",
    "bytes=-70000",
    f"bytes=-{SIZE + 10}",
]


def test_full_and_ranged_gets_are_byte_exact(registry: RegistryServer, data: bytes) -> None:
    r = httpx.get(registry.url + PATH)
    assert r.status_code == 200
    assert r.headers["content-length"] == str(SIZE)
    assert r.content == data
    for header in RANGES:
        start, end = _span(header, SIZE)
        r = httpx.get(registry.url + PATH, headers={"Range": header})
        assert r.status_code == 206, header
        assert r.headers["content-range"] == f"bytes {start}-{end - 1}/{SIZE}", header
        assert r.headers["content-length"] == str(end - start), header
        assert r.content == data[start:end], header


def test_one_keep_alive_connection_serves_many_responses(
    registry: RegistryServer, data: bytes
) -> None:
    """Ranges, whole bodies and bodiless answers in turn on one socket."""
    conn = http.client.HTTPConnection("127.0.0.1", _port(registry), timeout=30)
    try:
        conn.connect()
        sock = conn.sock
        assert sock is not None
        local = sock.getsockname()
        etag = ""
        for i, header in enumerate(RANGES * 2):
            start, end = _span(header, SIZE)
            conn.request("GET", PATH, headers={"Range": header})
            resp = conn.getresponse()
            assert resp.status == 206, header
            assert resp.read() == data[start:end], header
            assert resp.getheader("connection") != "close"
            etag = resp.getheader("etag") or ""
            if i % 5 == 4:  # bodiless responses in between must not upset the cycle
                conn.request("HEAD", PATH)
                head = conn.getresponse()
                assert (head.status, head.read()) == (200, b"")
                assert head.getheader("content-length") == str(SIZE)
                conn.request("GET", PATH, headers={"If-None-Match": etag})
                not_modified = conn.getresponse()
                assert (not_modified.status, not_modified.read()) == (304, b"")
        conn.request("GET", PATH)
        full = conn.getresponse()
        assert (full.status, full.read()) == (200, data)
        assert conn.sock is sock
        assert sock.getsockname() == local
    finally:
        conn.close()


def test_bodies_longer_than_one_read_are_exact(registry: RegistryServer) -> None:
    """A blob of two reads and a bit: whole, and ranges across the read boundaries."""
    size = 2 * STREAM_CHUNK + 4093
    blob = os.urandom(size)
    url = registry.url + "/blobs/zc/v1/two-reads"
    assert httpx.put(url, content=blob, headers=registry.auth()).status_code == 201
    with httpx.Client(timeout=60) as client:
        assert client.get(url).content == blob
        for start, end in (
            (STREAM_CHUNK - 1, STREAM_CHUNK + 1),
            (4095, 2 * STREAM_CHUNK + 1),
            (2 * STREAM_CHUNK - 10, size),
        ):
            r = client.get(url, headers={"Range": f"bytes={start}-{end - 1}"})
            assert r.status_code == 206
            assert r.content == blob[start:end], (start, end)


def test_an_empty_blob_has_an_empty_body(registry: RegistryServer) -> None:
    """Nothing to map: a 200 with Content-Length 0, and the connection stays usable."""
    url = registry.url + "/blobs/zc/v1/empty"
    assert httpx.put(url, content=b"", headers=registry.auth()).status_code == 201
    with httpx.Client() as client:
        for _ in range(2):
            r = client.get(url)
            assert (r.status_code, r.headers["content-length"], r.content) == (200, "0", b"")
        r = client.get(url, headers={"Range": "bytes=0-"})
        assert r.status_code == 416


def test_head_and_conditional_requests(registry: RegistryServer, data: bytes) -> None:
    etag = f'"{hashlib.sha256(data).hexdigest()}"'
    head = httpx.head(registry.url + PATH)
    assert head.status_code == 200
    assert head.headers["etag"] == etag
    assert head.headers["content-length"] == str(SIZE)
    assert head.content == b""
    ranged_head = httpx.head(registry.url + PATH, headers={"Range": "bytes=10-19"})
    assert ranged_head.status_code == 200  # ranges apply to GET only
    r = httpx.get(registry.url + PATH, headers={"If-None-Match": etag})
    assert (r.status_code, r.content) == (304, b"")
    r = httpx.get(registry.url + PATH, headers={"If-Match": '"0000"'})
    assert (r.status_code, r.content) == (412, b"")
    r = httpx.get(registry.url + PATH, headers={"If-Match": etag, "Range": "bytes=7-70000"})
    assert (r.status_code, r.content) == (206, data[7:70001])
    # a stale If-Range gets the whole (current) blob, never a range of something else
    r = httpx.get(registry.url + PATH, headers={"If-Range": '"0000"', "Range": "bytes=7-9"})
    assert (r.status_code, r.content) == (200, data)


def test_an_object_truncated_on_disk_is_never_served_as_a_full_body(
    registry: RegistryServer, data: bytes
) -> None:
    damaged = os.urandom(1 << 20)
    url = registry.url + "/blobs/zc/v1/damaged"
    assert httpx.put(url, content=damaged, headers=registry.auth()).status_code == 201
    obj = _object(registry, hashlib.sha256(damaged).hexdigest())
    os.chmod(obj, 0o600)
    os.truncate(obj, len(damaged) - 4096 - 1)
    for headers in ({}, {"Range": "bytes=0-99"}, {"Range": f"bytes={len(damaged) - 10}-"}):
        try:
            r = httpx.get(url, headers=headers)
        except httpx.RemoteProtocolError:
            continue  # an aborted body: the client knows it is incomplete
        assert r.status_code == 503, (headers, r.status_code)
        assert r.json()["type"].endswith("/unavailable")
        assert damaged[:100] not in r.content
    # the server goes on serving intact blobs, on a fresh and on a reused connection
    with httpx.Client() as client:
        for _ in range(3):
            assert client.get(registry.url + PATH).content == data
            r = client.get(registry.url + PATH, headers={"Range": "bytes=4095-65536"})
            assert r.content == data[4095:65537]


def test_an_object_truncated_while_it_is_sent_ends_the_body_short(
    registry: RegistryServer, data: bytes
) -> None:
    """Bodies are sent from memory maps of the objects: a file truncated under a mapping
    must cost that one response (a short body), never the registry process (``SIGBUS``)
    nor a byte that is not the object's. The client stops reading after 1 MiB, so most of
    the body is still to be sent when the file loses its bytes."""
    size = 2 * MAP_CHUNK + 4093  # far more than the two sockets' buffers can hold
    blob = os.urandom(size)
    url = registry.url + "/blobs/zc/v1/cut-while-sent"
    assert httpx.put(url, content=blob, headers=registry.auth()).status_code == 201
    obj = _object(registry, hashlib.sha256(blob).hexdigest())
    for headers in ({}, {"Range": f"bytes=4095-{size - 2}"}):
        start = 4095 if headers else 0
        conn = http.client.HTTPConnection("127.0.0.1", _port(registry), timeout=30)
        try:
            conn.request("GET", "/blobs/zc/v1/cut-while-sent", headers=headers)
            resp = conn.getresponse()
            assert resp.status == (206 if headers else 200)
            got = resp.read(1 << 20)
            os.chmod(obj, 0o600)
            os.truncate(obj, 1 << 20)
            try:
                got += resp.read()
            except http.client.IncompleteRead as short:
                got += short.partial
        finally:
            conn.close()
        assert len(got) < size - start
        assert got == blob[start : start + len(got)]
        with open(obj, "r+b") as f:  # intact again for the next round
            f.seek(0)
            f.write(blob)
    assert registry.proc.poll() is None
    with httpx.Client() as client:
        assert client.get(url).content == blob
        assert client.get(registry.url + PATH).content == data


@pytest.mark.slow
def test_tls_registry_streams_correct_bytes(tmp_path: Path) -> None:
    """Over TLS too, whole bodies (sent by the server) and ranges (streamed) are exact."""
    cert, key = self_signed_cert(tmp_path)
    server = start_registry(tmp_path / "data", tls=(cert, key))
    ctx = ssl.create_default_context(cafile=str(cert))
    blob = os.urandom(SIZE)
    try:
        with httpx.Client(verify=ctx) as client:
            r = client.put(server.url + PATH, content=blob, headers=server.auth())
            assert r.status_code == 201, r.text
            r = client.get(server.url + PATH, headers={"Range": "bytes=4095-1048577"})
            assert r.status_code == 206
            assert r.content == blob[4095:1048578]
            r = client.get(server.url + PATH, headers={"Range": "bytes=-65537"})
            assert r.content == blob[-65537:]
            assert client.get(server.url + PATH).content == blob
    finally:
        server.stop()
