"""Zero-copy blob sends: the uvicorn protocol extension, the response, and the local store.

The protocol tests drive a real :class:`ZeroCopyHttpToolsProtocol` over a Unix socketpair
(no network): raw HTTP/1.1 requests in, raw responses out, so the request cycle, keep-alive
and ``loop.sendfile`` are uvicorn's and the kernel's own.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
import socket
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import anyio
import pytest
import uvicorn
from uvicorn.server import ServerState

from modelseal.blobstore.base import FileBackedStore
from modelseal.blobstore.local import LocalBlobStore
from modelseal.errors import BackendError, BlobNotFound
from modelseal.registry.blob_response import EXTENSION, ZeroCopyFileResponse, offers_zero_copy
from modelseal.registry.zerocopy import ZeroCopyHttpToolsProtocol, supported

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


async def _aiter(*chunks: bytes) -> Any:
    for c in chunks:
        yield c


# -- supported() / offers_zero_copy ------------------------------------------------------------


def test_installed_uvicorn_keeps_the_fast_path_on() -> None:
    assert supported(), (
        f"uvicorn {uvicorn.__version__} lacks what registry.zerocopy relies on: check that "
        "uvicorn.protocols.http.httptools_impl.RequestResponseCycle.__init__ still sets "
        "transport/response_started/response_complete/expected_content_length/"
        "chunked_encoding/disconnected and HttpToolsProtocol still has _start_asgi_task; "
        "adapt zerocopy.py or narrow the uvicorn range in pyproject.toml (the registry would "
        "otherwise silently stream every blob through Python)"
    )


@pytest.mark.parametrize(
    ("scope", "offered"),
    [
        ({"type": "http", "extensions": {EXTENSION: {}}}, True),
        ({"type": "http", "extensions": {EXTENSION: {}, "http.response.trailers": {}}}, True),
        ({"type": "http", "extensions": {"http.response.trailers": {}}}, False),
        ({"type": "http", "extensions": {}}, False),
        ({"type": "http", "extensions": None}, False),
        ({"type": "http"}, False),
    ],
)
def test_offers_zero_copy(scope: dict[str, Any], offered: bool) -> None:
    assert offers_zero_copy(scope) is offered


# -- LocalBlobStore.open_file ------------------------------------------------------------------


def _fds_on(path: Path) -> int:
    """How many of this process's file descriptors are open on ``path``."""
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == str(path):
                n += 1
        except OSError:
            continue
    return n


def test_open_file_returns_the_object(tmp_path: Path) -> None:
    async def main() -> None:
        store = LocalBlobStore(tmp_path / "b")
        assert isinstance(store, FileBackedStore)
        data = os.urandom(70_001)
        info = await store.put("m/v1/a", _aiter(data[:5], data[5:]))
        f = await store.open_file(info)
        try:
            assert f.read() == data
            f.seek(4096)
            assert f.read(10) == data[4096:4106]
        finally:
            f.close()

    anyio.run(main)


def test_open_file_of_a_missing_object_is_blob_not_found(tmp_path: Path) -> None:
    async def main() -> None:
        store = LocalBlobStore(tmp_path / "b")
        info = await store.put("m/v1/a", _aiter(b"hello"))
        obj = tmp_path / "b" / "objects" / info.sha256[:2] / info.sha256
        obj.unlink()
        with pytest.raises(BlobNotFound) as err:
            await store.open_file(info)
        assert str(tmp_path) not in str(err.value)

    anyio.run(main)


def test_open_file_refuses_an_object_truncated_on_disk_and_closes_it(tmp_path: Path) -> None:
    async def main() -> None:
        store = LocalBlobStore(tmp_path / "b")
        data = os.urandom(10_000)
        info = await store.put("m/v1/a", _aiter(data))
        obj = tmp_path / "b" / "objects" / info.sha256[:2] / info.sha256
        os.chmod(obj, 0o600)
        os.truncate(obj, 9_999)
        before = _fds_on(obj)
        with pytest.raises(BackendError, match="shorter than recorded"):
            await store.open_file(info)
        assert _fds_on(obj) == before == 0
        # an object longer than recorded is not this check's business: it opens
        with obj.open("ab") as fh:
            fh.write(b"xx")
        f = await store.open_file(info)
        f.close()

    anyio.run(main)


# -- ZeroCopyFileResponse ----------------------------------------------------------------------


def test_response_sends_start_then_one_zero_copy_message_and_closes_the_file(
    tmp_path: Path,
) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"0123456789")
    f = path.open("rb")
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(dict(message))

    async def receive() -> Message:
        return {"type": "http.disconnect"}

    headers = {"Content-Length": "4", "Content-Range": "bytes 3-6/10"}
    response = ZeroCopyFileResponse(f, 3, 7, status_code=206, headers=headers)
    anyio.run(response, {"type": "http", "extensions": {EXTENSION: {}}}, receive, send)
    assert f.closed
    assert [m["type"] for m in sent] == ["http.response.start", EXTENSION]
    assert sent[0]["status"] == 206
    assert (b"content-length", b"4") in sent[0]["headers"]
    assert (b"content-type", b"application/octet-stream") in sent[0]["headers"]
    assert sent[1] == {
        "type": EXTENSION,
        "file": f,
        "offset": 3,
        "count": 4,
        "more_body": False,
    }


def test_response_closes_the_file_when_the_send_fails(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x")
    f = path.open("rb")

    async def send(message: Message) -> None:
        raise OSError("connection reset")

    async def receive() -> Message:
        return {"type": "http.disconnect"}

    response = ZeroCopyFileResponse(f, 0, 1, status_code=200, headers={"Content-Length": "1"})
    with pytest.raises(OSError, match="connection reset"):
        anyio.run(response, {"type": "http"}, receive, send)
    assert f.closed


# -- the protocol over a socketpair ------------------------------------------------------------


class _Conn:
    """One HTTP/1.1 connection served by ZeroCopyHttpToolsProtocol on a socketpair."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.buffer = b""

    async def __aenter__(self) -> _Conn:
        loop = asyncio.get_running_loop()
        config = uvicorn.Config(self.app, log_level="critical", lifespan="off")
        config.load()
        server_side, self.client = socket.socketpair()
        self.client.setblocking(False)
        protocol = ZeroCopyHttpToolsProtocol(config, ServerState(), {}, loop)
        self.transport, _ = await loop.connect_accepted_socket(lambda: protocol, server_side)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.transport.close()
        self.client.close()

    async def request(self, target: str = "/", extra: str = "") -> None:
        raw = f"GET {target} HTTP/1.1\r\nHost: test\r\n{extra}\r\n".encode()
        await asyncio.get_running_loop().sock_sendall(self.client, raw)

    async def _fill(self) -> bool:
        chunk = await asyncio.get_running_loop().sock_recv(self.client, 1 << 16)
        self.buffer += chunk
        return bool(chunk)

    async def response(self) -> tuple[int, dict[str, str], bytes]:
        """The next complete Content-Length response; AssertionError on a truncated one."""
        while b"\r\n\r\n" not in self.buffer:
            assert await self._fill(), f"connection closed mid-head: {self.buffer!r}"
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        status_line, *lines = head.decode().split("\r\n")
        headers = {k.lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines)}
        length = int(headers["content-length"])
        while len(self.buffer) < length:
            assert await self._fill(), f"body ended after {len(self.buffer)} of {length} bytes"
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return int(status_line.split()[1]), headers, body

    async def rest_until_eof(self) -> bytes:
        while await self._fill():
            pass
        rest, self.buffer = self.buffer, b""
        return rest


def _file_app(conn_scopes: list[Scope], errors: list[BaseException], path: Path) -> App:
    """Serves ``path`` with zerocopysend: ``/a-b`` -> bytes [a, b) in 3 messages when ``?split``."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        conn_scopes.append(scope)
        start, end = (int(x) for x in scope["path"].lstrip("/").split("-"))
        headers = [(b"content-length", str(end - start).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        with path.open("rb") as f:
            if scope["query_string"] == b"split":
                cuts = [start, start + (end - start) // 3, start + 2 * (end - start) // 3, end]
                for a, b in itertools.pairwise(cuts):
                    more = b != end
                    msg = {"type": EXTENSION, "file": f, "offset": a, "count": b - a}
                    await send({**msg, "more_body": more})
            else:
                try:
                    await send(
                        {"type": EXTENSION, "file": f, "offset": start, "count": end - start}
                    )
                except OSError as exc:
                    errors.append(exc)

    return app


@pytest.fixture
def blob_file(tmp_path: Path) -> tuple[Path, bytes]:
    data = os.urandom(300_000 + 7)
    path = tmp_path / "blob"
    path.write_bytes(data)
    return path, data


def test_sendfile_bodies_are_exact_and_the_connection_stays_alive(
    blob_file: tuple[Path, bytes],
) -> None:
    path, data = blob_file
    scopes: list[Scope] = []
    errors: list[BaseException] = []

    async def main() -> None:
        async with _Conn(_file_app(scopes, errors, path)) as conn:
            spans = [
                (0, 1),
                (4095, 4097),
                (65_535, 131_073),
                (0, len(data)),
                (len(data) - 1, len(data)),
            ]
            for a, b in spans:
                await conn.request(f"/{a}-{b}")
                status, _, body = await conn.response()
                assert status == 200
                assert body == data[a:b], (a, b)
            # several messages for one body (more_body=True), pipelined requests
            await conn.request(f"/1-{len(data)}?split")
            await conn.request("/100-200")
            _, _, body = await conn.response()
            assert hashlib.sha256(body).digest() == hashlib.sha256(data[1:]).digest()
            _, _, body = await conn.response()
            assert body == data[100:200]

    anyio.run(main)
    assert errors == []
    assert len(scopes) == 7
    assert all(offers_zero_copy(s) for s in scopes)


def test_a_file_shorter_than_the_count_aborts_the_connection(tmp_path: Path) -> None:
    path = tmp_path / "short"
    data = os.urandom(50_000)
    path.write_bytes(data)
    scopes: list[Scope] = []
    errors: list[BaseException] = []

    async def main() -> None:
        async with _Conn(_file_app(scopes, errors, path)) as conn:
            await conn.request("/0-80000")
            while b"\r\n\r\n" not in conn.buffer:
                assert await conn._fill()
            head, _, _ = conn.buffer.partition(b"\r\n\r\n")
            assert b"content-length: 80000" in head.lower()
            received = await conn.rest_until_eof()
            body = received.partition(b"\r\n\r\n")[2]
            # never padded, never a full-length body: the bytes that came are the file's
            assert len(body) == len(data)
            assert body == data

    anyio.run(main)
    assert len(errors) == 1
    assert "50000 of 80000" in str(errors[0])


_START = {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}


def _refused(path: Path, *, started: bool, count: int) -> RuntimeError:
    """Sends (start, when ``started``, then) a zerocopysend of ``count`` bytes, which must
    raise; the app then finishes a normal ``ok`` response on the same connection."""
    errors: list[RuntimeError] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if started:
            await send(_START)
        with path.open("rb") as f:
            try:
                await send({"type": EXTENSION, "file": f, "offset": 0, "count": count})
            except RuntimeError as exc:
                errors.append(exc)
        if not started:
            await send(_START)
        await send({"type": "http.response.body", "body": b"ok"})

    async def main() -> None:
        async with _Conn(app) as conn:
            for _ in range(2):  # the refusal leaves the connection usable
                await conn.request()
                status, _, body = await conn.response()
                assert (status, body) == (200, b"ok")

    anyio.run(main)
    assert len(errors) == 2
    return errors[0]


def test_zero_copy_before_the_response_start_is_refused(blob_file: tuple[Path, bytes]) -> None:
    err = _refused(blob_file[0], started=False, count=1)
    assert "outside a started, unfinished response" in str(err)


def test_zero_copy_longer_than_the_content_length_is_refused(
    blob_file: tuple[Path, bytes],
) -> None:
    err = _refused(blob_file[0], started=True, count=3)
    assert "longer than Content-Length" in str(err)


def test_zero_copy_needs_a_content_length(blob_file: tuple[Path, bytes]) -> None:
    path, _ = blob_file
    errors: list[BaseException] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        try:
            with path.open("rb") as f:
                await send({"type": EXTENSION, "file": f, "offset": 0, "count": 3})
        except RuntimeError as exc:
            errors.append(exc)
        await send({"type": "http.response.body", "body": b""})

    async def main() -> None:
        async with _Conn(app) as conn:
            await conn.request()
            while b"0\r\n\r\n" not in conn.buffer:
                assert await conn._fill()
            assert b"transfer-encoding: chunked" in conn.buffer.lower()

    anyio.run(main)
    assert len(errors) == 1
    assert "needs a Content-Length" in str(errors[0])


def test_a_client_hanging_up_mid_body_ends_the_send_quietly(tmp_path: Path) -> None:
    """A cancelled load or a killed pod drops its connection: no exception, no traceback."""
    path = tmp_path / "big"
    path.write_bytes(os.urandom(16 << 20))  # far more than the socket buffers hold
    raised: list[BaseException] = []
    done = asyncio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-length", str(16 << 20).encode())]
        try:
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            with path.open("rb") as f:
                await send({"type": EXTENSION, "file": f, "offset": 0, "count": 16 << 20})
        except BaseException as exc:
            raised.append(exc)
            raise
        finally:
            done.set()

    async def main() -> None:
        async with _Conn(app) as conn:
            await conn.request("/")
            assert await conn._fill()  # the head and the first bytes arrived
            conn.client.close()  # hang up with most of the body unsent
            await asyncio.wait_for(done.wait(), 10)

    anyio.run(main)
    assert raised == []
