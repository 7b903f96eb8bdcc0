"""Blob bodies: the local store's object check, and what the registry app sends.

The app tests drive the real registry app over ASGI with a recording ``send``, so they see
exactly the messages a server would: the status line, then body chunks of at most
``STREAM_CHUNK`` bytes (streamed) or ``MAP_CHUNK`` bytes (mapped: memoryviews of the object).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import anyio
import pytest
from starlette.responses import StreamingResponse

from modelseal.blobstore.base import BlobInfo, FileBackedStore
from modelseal.blobstore.local import LocalBlobStore
from modelseal.errors import BackendError, BlobNotFound
from modelseal.registry import blob_response
from modelseal.registry.app import create_app
from modelseal.registry.settings import RegistrySettings

Message = MutableMapping[str, Any]


async def _aiter(*chunks: bytes) -> Any:
    for c in chunks:
        yield c


def _object(root: Path, info: BlobInfo) -> Path:
    return root / "objects" / info.sha256[:2] / info.sha256


# -- LocalBlobStore.check_object ----------------------------------------------------------------


def test_check_object_accepts_an_intact_object(tmp_path: Path) -> None:
    async def main() -> None:
        store = LocalBlobStore(tmp_path / "b")
        assert isinstance(store, FileBackedStore)
        info = await store.put("m/v1/a", _aiter(os.urandom(70_001)))
        await store.check_object(info)

    anyio.run(main)


def test_check_object_of_a_missing_object_is_blob_not_found(tmp_path: Path) -> None:
    async def main() -> None:
        store = LocalBlobStore(tmp_path / "b")
        info = await store.put("m/v1/a", _aiter(b"hello"))
        _object(tmp_path / "b", info).unlink()
        with pytest.raises(BlobNotFound) as err:
            await store.check_object(info)
        assert str(tmp_path) not in str(err.value)

    anyio.run(main)


@pytest.mark.parametrize("delta", [-1, 1])
def test_check_object_refuses_an_object_of_another_size(tmp_path: Path, delta: int) -> None:
    """Shorter could not fill the Content-Length; longer is not the recorded object."""

    async def main() -> None:
        store = LocalBlobStore(tmp_path / "b")
        info = await store.put("m/v1/a", _aiter(os.urandom(10_000)))
        obj = _object(tmp_path / "b", info)
        os.chmod(obj, 0o600)
        os.truncate(obj, 10_000 + delta)
        with pytest.raises(
            BackendError, match=f"is {10_000 + delta} bytes on disk, not 10000"
        ) as e:
            await store.check_object(info)
        assert str(tmp_path) not in str(e.value)

    anyio.run(main)


def test_open_object_is_a_descriptor_of_the_checked_object(tmp_path: Path) -> None:
    async def main() -> None:
        store = LocalBlobStore(tmp_path / "b")
        data = os.urandom(70_001)
        info = await store.put("m/v1/a", _aiter(data))
        fd = await store.open_object(info)
        try:
            assert os.pread(fd, len(data) + 1, 0) == data
        finally:
            os.close(fd)
        os.chmod(_object(tmp_path / "b", info), 0o600)
        os.truncate(_object(tmp_path / "b", info), len(data) - 1)
        with pytest.raises(BackendError, match="70000 bytes on disk, not 70001"):
            await store.open_object(info)

    anyio.run(main)


def test_a_mapped_body_of_a_file_that_shrank_after_the_check_fails(tmp_path: Path) -> None:
    """The shortfall surfaces as ``BackendError`` from the body (the server then drops the
    connection short of its Content-Length), never as bytes that are not the object's."""

    async def main() -> None:
        store = LocalBlobStore(tmp_path / "b")
        data = os.urandom(3 * CHUNK)
        info = await store.put("m/v1/a", _aiter(data))
        response = await blob_response.blob_body(
            store, info, 0, info.size, status_code=200, headers={}, mapped=True
        )
        assert isinstance(response, StreamingResponse)
        body = response.body_iterator
        first = await anext(body)
        assert bytes(first) == data[:CHUNK]
        obj = _object(tmp_path / "b", info)
        os.chmod(obj, 0o600)
        os.truncate(obj, CHUNK)
        with pytest.raises(BackendError, match="cannot be read") as err:
            await anext(body)
        assert str(tmp_path) not in str(err.value)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(blob_response, "MAP_CHUNK", CHUNK)
        anyio.run(main)


def _fds_of(path: Path) -> int:
    """How many of this process's descriptors refer to ``path``."""
    found = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            found += os.readlink(f"/proc/self/fd/{fd}") == str(path)
        except OSError:  # closed meanwhile (the listing's own descriptor, too)
            continue
    return found


@pytest.mark.parametrize("chunks", [0, 1, 3])
def test_a_mapped_body_closes_its_descriptor_however_far_it_is_sent(
    tmp_path: Path, chunks: int
) -> None:
    """Not at all (the client left before the status line), partly, or to the end: the
    object's descriptor is closed once the response is dropped."""

    async def main() -> None:
        store = LocalBlobStore(tmp_path / "b")
        data = os.urandom(2 * CHUNK + 1)
        info = await store.put("m/v1/a", _aiter(data))
        obj = _object(tmp_path / "b", info)
        response = await blob_response.blob_body(
            store, info, 0, info.size, status_code=200, headers={}, mapped=True
        )
        assert isinstance(response, StreamingResponse)
        assert _fds_of(obj) == 1
        got = b""
        body = aiter(response.body_iterator)
        while len(got) < chunks * CHUNK and len(got) < len(data):
            got += await anext(body)
        assert got == data[: len(got)]
        del response, body
        # a page fault-in started on a worker thread for the next mapping holds the object
        # until it returns; the descriptor must be closed once it has
        for _ in range(500):
            if _fds_of(obj) == 0:
                break
            await anyio.sleep(0.01)
        assert _fds_of(obj) == 0

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(blob_response, "MAP_CHUNK", CHUNK)
        anyio.run(main)


# -- the registry app: status lines and streamed bodies ---------------------------------------

#: the read size under test (monkeypatched: small, so bodies span several reads)
CHUNK = 1 << 16
SIZE = CHUNK * 2 + 4093


class _Registry:
    def __init__(self, tmp_path: Path, *, mapped: bool) -> None:
        settings = RegistrySettings(data_dir=tmp_path / "data")
        self.root = settings.blob_root
        self.store = LocalBlobStore(self.root)
        self.mapped = mapped
        self.app = create_app(settings, self.store, mapped_bodies=mapped)
        self.data = os.urandom(SIZE)
        self.info = anyio.run(self._put)

    async def _put(self) -> BlobInfo:
        return await self.store.put("m/v1/w.sealed", _aiter(self.data))

    def request(
        self, headers: dict[str, str], *, method: str = "GET"
    ) -> tuple[int, dict[str, str], bytes]:
        """Status, headers and body of one request to the blob (each body message at most
        CHUNK bytes)."""
        sent: list[Message] = []

        async def send(message: Message) -> None:
            sent.append(dict(message))

        async def receive() -> Message:
            await anyio.sleep_forever()
            raise AssertionError("unreachable")

        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": "/blobs/m/v1/w.sealed",
            "raw_path": b"/blobs/m/v1/w.sealed",
            "query_string": b"",
            "root_path": "",
            "headers": [(b"host", b"registry")]
            + [(k.lower().encode(), v.encode()) for k, v in headers.items()],
            "client": ("127.0.0.1", 40000),
            "server": ("127.0.0.1", 8090),
            "extensions": {},
        }
        anyio.run(self.app, scope, receive, send)
        start, *body = sent
        assert start["type"] == "http.response.start"
        assert all(m["type"] == "http.response.body" for m in body), body
        assert all(len(m.get("body", b"")) <= CHUNK for m in body)
        # a mapped body is views of the object (no copy), the last message ends it
        kind = memoryview if self.mapped else bytes
        assert all(type(m["body"]) is kind for m in body[:-1]), body
        head = {k.decode(): v.decode() for k, v in start["headers"]}
        return start["status"], head, b"".join(m.get("body", b"") for m in body)


@pytest.fixture(params=[False, True], ids=["streamed", "mapped"])
def registry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> _Registry:
    monkeypatch.setattr(blob_response, "STREAM_CHUNK", CHUNK)
    monkeypatch.setattr(blob_response, "MAP_CHUNK", CHUNK)
    return _Registry(tmp_path, mapped=request.param)


@pytest.mark.parametrize(
    ("headers", "status", "start", "end"),
    [
        ({}, 200, 0, SIZE),
        ({"Range": "bytes=0-"}, 206, 0, SIZE),
        ({"Range": f"bytes=-{SIZE + 1}"}, 206, 0, SIZE),
        ({"Range": "bytes=0-9, 20-29"}, 200, 0, SIZE),  # several ranges: the whole blob
        ({"Range": "bytes=5-9", "If-Range": '"stale"'}, 200, 0, SIZE),
        ({"Range": "bytes=1-"}, 206, 1, SIZE),
        ({"Range": "bytes=0-0"}, 206, 0, 1),
        ({"Range": f"bytes={CHUNK - 1}-{2 * CHUNK}"}, 206, CHUNK - 1, 2 * CHUNK + 1),
        ({"Range": f"bytes=0-{SIZE - 2}"}, 206, 0, SIZE - 1),
        ({"Range": "bytes=-4097"}, 206, SIZE - 4097, SIZE),
    ],
)
def test_bodies_are_exact_in_bounded_reads(
    registry: _Registry, headers: dict[str, str], status: int, start: int, end: int
) -> None:
    got, head, body = registry.request(headers)
    assert got == status
    assert head["content-length"] == str(end - start)
    assert head["content-type"] == "application/octet-stream"
    assert head["etag"] == f'"{hashlib.sha256(registry.data).hexdigest()}"'
    if status == 206:
        assert head["content-range"] == f"bytes {start}-{end - 1}/{SIZE}"
    assert body == registry.data[start:end]


@pytest.mark.parametrize(
    ("method", "headers", "status"),
    [
        ("HEAD", {}, 200),
        ("GET", {"If-None-Match": "*"}, 304),
        ("GET", {"If-Match": '"0000"'}, 412),
        ("GET", {"Range": f"bytes={SIZE}-"}, 416),
    ],
)
def test_bodiless_answers_read_nothing(
    registry: _Registry, method: str, headers: dict[str, str], status: int
) -> None:
    got, _, body = registry.request(headers, method=method)
    assert (got, body) == (status, b"")


@pytest.mark.parametrize("headers", [{}, {"Range": "bytes=0-99"}, {"Range": "bytes=-10"}])
def test_a_damaged_object_gets_503_before_any_byte(
    registry: _Registry, headers: dict[str, str]
) -> None:
    obj = _object(registry.root, registry.info)
    os.chmod(obj, 0o600)
    os.truncate(obj, SIZE - 1)
    status, head, body = registry.request(headers)
    assert status == 503
    assert "content-range" not in head
    assert body.startswith(b"{")
    assert registry.data[:10] not in body
