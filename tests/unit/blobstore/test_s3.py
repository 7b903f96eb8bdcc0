"""S3 blob store against moto's S3 server over real HTTP (a mock of S3's behaviour; tests
against a real S3 server, Ceph RGW, come with the scale-out work)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator, Iterable, Iterator

import anyio
import pytest
from tests.conftest import free_port

from modelseal.blobstore.base import BlobStore, BlobTooLarge, DigestMismatch
from modelseal.blobstore.s3 import S3BlobStore
from modelseal.errors import BlobNotFound, ConfigError, TransientError

moto_server = pytest.importorskip("moto.server")


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def store(endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3BlobStore]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    bucket = f"b{os.urandom(4).hex()}"
    s = S3BlobStore.from_url(f"s3://{bucket}/reg/prefix?endpoint={endpoint}")
    s._client.create_bucket(Bucket=bucket)
    s.part_size = 5 << 20
    yield s
    s._client.close()


async def _aiter(chunks: Iterable[bytes]) -> AsyncIterator[bytes]:
    for c in chunks:
        yield c


async def _read(store: S3BlobStore, key: str, start: int, end: int) -> bytes:
    info = await store.stat(key)
    return b"".join([c async for c in store.open_range(info, start, end, chunk_size=1 << 16)])


def test_small_and_multipart_roundtrip(store: S3BlobStore) -> None:
    async def main() -> None:
        assert isinstance(store, BlobStore)
        small = await store.put("m/v1/small", _aiter([b"hello ", b"world"]))
        assert small.sha256 == hashlib.sha256(b"hello world").hexdigest()
        assert await _read(store, "m/v1/small", 0, 11) == b"hello world"
        assert await _read(store, "m/v1/small", 6, 11) == b"world"
        data = os.urandom(12 * (1 << 20) + 3)
        chunks = [data[i : i + 300_000] for i in range(0, len(data), 300_000)]
        big = await store.put("m/v1/big", _aiter(chunks))
        assert (big.size, big.sha256) == (len(data), hashlib.sha256(data).hexdigest())
        assert await store.stat("m/v1/big") == big
        assert await _read(store, "m/v1/big", 0, len(data)) == data
        assert await _read(store, "m/v1/big", 5 << 20, (5 << 20) + 10) == data[5 << 20 :][:10]
        assert await _read(store, "m/v1/big", 3, 3) == b""
        keys = [i.key async for i in store.list_blobs("m/v1/")]
        assert keys == ["m/v1/big", "m/v1/small"]
        empty = await store.put("m/v1/empty", _aiter([]))
        assert empty.size == 0
        await store.delete("m/v1/big")
        with pytest.raises(BlobNotFound):
            await store.stat("m/v1/big")
        with pytest.raises(BlobNotFound):
            await store.delete("m/v1/big")

    anyio.run(main)


def test_limits_and_digest_keep_the_old_blob(store: S3BlobStore) -> None:
    async def main() -> None:
        await store.put("k", _aiter([b"keep"]))
        with pytest.raises(BlobTooLarge):
            await store.put("k", _aiter([b"x" * (6 << 20)] * 2), max_size=7 << 20)
        with pytest.raises(DigestMismatch):
            await store.put("k", _aiter([b"y" * (11 << 20)]), expected_sha256="00" * 32)
        assert await _read(store, "k", 0, 4) == b"keep"
        uploads = store._client.list_multipart_uploads(Bucket=store.bucket)
        assert uploads.get("Uploads", []) == []

    anyio.run(main)


def test_replaced_blob_is_not_mixed_into_a_read(store: S3BlobStore) -> None:
    async def main() -> None:
        old = await store.put("k", _aiter([b"A" * 100]))
        await store.put("k", _aiter([b"B" * 100]))
        with pytest.raises(TransientError):
            async for _ in store.open_range(old, 0, 100):
                pass

    anyio.run(main)


def test_missing_and_invalid(store: S3BlobStore) -> None:
    async def main() -> None:
        with pytest.raises(BlobNotFound):
            await store.stat("nope")
        with pytest.raises(ConfigError):
            await store.stat("../x")

    anyio.run(main)


@pytest.mark.parametrize(
    "url",
    ["s3://", "s3://user:pw@bucket/x", "s3://bucket/x?bogus=1", "http://bucket/x"],
)
def test_bad_urls(url: str) -> None:
    with pytest.raises(ConfigError):
        S3BlobStore.from_url(url)


@pytest.mark.parametrize(
    "meta",
    [b"[" * 100_000 + b"]" * 100_000, b'{"size": 1, "sha256": "' + b"a" * 1_000_000 + b'"}'],
    ids=["deep", "huge"],
)
def test_hostile_metadata_in_the_bucket_is_a_backend_error(store: S3BlobStore, meta: bytes) -> None:
    """The bucket is not trusted: its metadata objects are parsed with a size and depth cap."""
    from modelseal.errors import BackendError

    async def main() -> None:
        await store.put("m/v1/x", _aiter([b"x"]))
        store._client.put_object(Bucket=store.bucket, Key=store._meta_key("m/v1/x"), Body=meta)
        with pytest.raises(BackendError, match="corrupt blob metadata"):
            await store.stat("m/v1/x")

    anyio.run(main)
