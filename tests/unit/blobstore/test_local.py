"""Local content-addressed blob store: atomic puts, ranges, limits, constant memory."""

from __future__ import annotations

import hashlib
import os
import stat
import tracemalloc
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import anyio
import pytest

from modelseal.blobstore.base import BlobStore, BlobTooLarge, DigestMismatch
from modelseal.blobstore.factory import open_blob_store
from modelseal.blobstore.local import LocalBlobStore
from modelseal.errors import BlobNotFound, ConfigError


async def _aiter(chunks: Iterable[bytes]) -> AsyncIterator[bytes]:
    for c in chunks:
        yield c


async def _read(store: LocalBlobStore, key: str, start: int, end: int, chunk: int = 7) -> bytes:
    info = await store.stat(key)
    return b"".join([c async for c in store.open_range(info, start, end, chunk_size=chunk)])


def test_put_stat_read_roundtrip(tmp_path: Path) -> None:
    async def main() -> None:
        store = LocalBlobStore(tmp_path / "b")
        assert isinstance(store, BlobStore)
        data = os.urandom(100_000)
        info = await store.put("m/v1/a.sealed", _aiter([data[:3], data[3:50_000], data[50_000:]]))
        assert info.size == len(data)
        assert info.sha256 == hashlib.sha256(data).hexdigest()
        assert info.etag == f'"{info.sha256}"'
        assert await store.stat("m/v1/a.sealed") == info
        assert await _read(store, "m/v1/a.sealed", 0, len(data), chunk=4096) == data
        assert await _read(store, "m/v1/a.sealed", 10, 11) == data[10:11]
        assert await _read(store, "m/v1/a.sealed", 99_990, 100_000) == data[-10:]
        assert await _read(store, "m/v1/a.sealed", 5, 5) == b""
        with pytest.raises(ConfigError):
            await _read(store, "m/v1/a.sealed", 0, len(data) + 1)

    anyio.run(main)


def test_empty_blob(tmp_path: Path) -> None:
    async def main() -> None:
        store = LocalBlobStore(tmp_path)
        info = await store.put("e", _aiter([]))
        assert (info.size, info.sha256) == (0, hashlib.sha256(b"").hexdigest())
        assert await _read(store, "e", 0, 0) == b""

    anyio.run(main)


def test_overwrite_is_atomic_and_open_readers_keep_old_bytes(tmp_path: Path) -> None:
    async def main() -> None:
        store = LocalBlobStore(tmp_path)
        old = await store.put("k", _aiter([b"A" * 5000]))
        reader = store.open_range(old, 0, 5000, chunk_size=1000)
        first = await reader.__anext__()
        new = await store.put("k", _aiter([b"B" * 10]))
        rest = b"".join([c async for c in reader])
        assert first + rest == b"A" * 5000
        assert await store.stat("k") == new
        assert await _read(store, "k", 0, 10) == b"B" * 10
        # the old object is gone once unreferenced
        assert not (tmp_path / "objects" / old.sha256[:2] / old.sha256).exists()

    anyio.run(main)


def test_identical_content_is_stored_once_and_delete_keeps_shared(tmp_path: Path) -> None:
    async def main() -> None:
        store = LocalBlobStore(tmp_path)
        a = await store.put("m/1/a", _aiter([b"same"]))
        b = await store.put("m/2/b", _aiter([b"same"]))
        assert a.sha256 == b.sha256
        await store.delete("m/1/a")
        assert await _read(store, "m/2/b", 0, 4) == b"same"
        with pytest.raises(BlobNotFound):
            await store.stat("m/1/a")
        with pytest.raises(BlobNotFound):
            await store.delete("m/1/a")
        await store.delete("m/2/b")
        assert not any((tmp_path / "objects").rglob("*" + a.sha256))
        assert not (tmp_path / "refs" / "m").exists()

    anyio.run(main)


def test_list(tmp_path: Path) -> None:
    async def main() -> None:
        store = LocalBlobStore(tmp_path)
        for key in ["m/v1/a", "m/v1/sub/b", "m/v2/a", "n/v1/a"]:
            await store.put(key, _aiter([key.encode()]))
        assert [i.key async for i in store.list_blobs("m/v1/")] == ["m/v1/a", "m/v1/sub/b"]
        assert len([i async for i in store.list_blobs()]) == 4

    anyio.run(main)


def test_too_large_and_digest_mismatch_store_nothing(tmp_path: Path) -> None:
    async def main() -> None:
        store = LocalBlobStore(tmp_path)
        await store.put("k", _aiter([b"keep"]))
        with pytest.raises(BlobTooLarge):
            await store.put("k", _aiter([b"x" * 10, b"y" * 10]), max_size=15)
        with pytest.raises(DigestMismatch):
            await store.put("k", _aiter([b"other"]), expected_sha256="00" * 32)
        assert await _read(store, "k", 0, 4) == b"keep"
        assert list((tmp_path / "tmp").iterdir()) == []
        ok = await store.put("j", _aiter([b"x"]), expected_sha256=hashlib.sha256(b"x").hexdigest())
        assert ok.size == 1

    anyio.run(main)


def test_failed_stream_leaves_nothing(tmp_path: Path) -> None:
    async def broken() -> AsyncIterator[bytes]:
        yield b"partial"
        raise ConnectionResetError

    async def main() -> None:
        store = LocalBlobStore(tmp_path)
        with pytest.raises(ConnectionResetError):
            await store.put("k", broken())
        with pytest.raises(BlobNotFound):
            await store.stat("k")
        assert list((tmp_path / "tmp").iterdir()) == []

    anyio.run(main)


@pytest.mark.parametrize("key", ["../x", "/abs", "a/../../b", ".ref", "a//b", ""])
def test_invalid_keys(tmp_path: Path, key: str) -> None:
    async def main() -> None:
        store = LocalBlobStore(tmp_path)
        with pytest.raises(ConfigError):
            await store.put(key, _aiter([b"x"]))
        with pytest.raises(ConfigError):
            await store.stat(key)

    anyio.run(main)


def test_directories_are_private(tmp_path: Path) -> None:
    LocalBlobStore(tmp_path / "new")
    assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o700


@pytest.mark.parametrize(
    "content",
    ["{not json", "[" * 100_000 + "]" * 100_000, '{"size": 1, "sha256": "' + "a" * 5000 + '"}'],
    ids=["malformed", "deep", "huge"],
)
def test_corrupt_ref_is_a_backend_error(tmp_path: Path, content: str) -> None:
    from modelseal.errors import BackendError

    async def main() -> None:
        store = LocalBlobStore(tmp_path)
        await store.put("k", _aiter([b"x"]))
        (tmp_path / "refs" / "k.ref").write_text(content)
        with pytest.raises(BackendError, match="corrupt blob reference"):
            await store.stat("k")

    anyio.run(main)


def test_streaming_uses_constant_memory(tmp_path: Path) -> None:
    """Writing and reading 64 MiB allocates a few MiB at most (chunks, not the blob)."""
    size = 64 << 20
    block = os.urandom(1 << 16)

    async def produce() -> AsyncIterator[bytes]:
        for _ in range(size // len(block)):
            yield block

    async def main() -> None:
        store = LocalBlobStore(tmp_path)
        tracemalloc.start()
        try:
            info = await store.put("big", produce())
            _, put_peak = tracemalloc.get_traced_memory()
            tracemalloc.reset_peak()
            h = hashlib.sha256()
            async for chunk in store.open_range(info, 0, info.size):
                h.update(chunk)
            _, read_peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert h.hexdigest() == info.sha256
        assert put_peak < 16 << 20, put_peak
        assert read_peak < 8 << 20, read_peak

    anyio.run(main)


def test_factory(tmp_path: Path) -> None:
    assert isinstance(open_blob_store(None, default_root=tmp_path / "d"), LocalBlobStore)
    s = open_blob_store(f"file://{tmp_path}/f", default_root=tmp_path)
    assert isinstance(s, LocalBlobStore)
    assert s.root == tmp_path / "f"
    s = open_blob_store(str(tmp_path / "p"), default_root=tmp_path)
    assert isinstance(s, LocalBlobStore)
    assert s.root == tmp_path / "p"
    with pytest.raises(ConfigError):
        open_blob_store("ftp://x/y", default_root=tmp_path)
    with pytest.raises(ConfigError):
        open_blob_store("file://remote/x", default_root=tmp_path)
