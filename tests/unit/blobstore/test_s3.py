"""S3 blob store against moto's S3 server over real HTTP (a mock of S3's behaviour; tests
against a real S3 server, Ceph RGW, come with the scale-out work)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import AsyncIterator, Iterable, Iterator

import anyio
import pytest

from modelseal.blobstore.base import BlobStore, BlobTooLarge, DigestMismatch
from modelseal.blobstore.s3 import S3BlobStore
from modelseal.errors import BlobNotFound, ConfigError, TransientError

moto_server = pytest.importorskip("moto.server")


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
    [
        b"[" * 100_000 + b"]" * 100_000,
        b'{"size": 1, "sha256": "' + b"a" * 1_000_000 + b'"}',
        # a ref naming an object outside objects/ (the last is 31 hex and a slash)
        b'{"size": 1, "sha256": "a", "etag": "e", "object": "../../meta/m/v1/y.json"}',
        b'{"size": 1, "sha256": "a", "etag": "e", "object": "' + b"0" * 31 + b'/"}',
        b'{"size": 1, "sha256": "a", "etag": "e x", "object": "' + b"0" * 32 + b'"}',
        b"[1]",
    ],
    ids=["deep", "huge", "escape", "slash", "space", "list"],
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


@pytest.mark.parametrize("size", [100, 11 << 20])  # one PutObject; a multipart upload
def test_an_overwrite_cut_off_before_its_metadata_keeps_the_old_blob(
    store: S3BlobStore, size: int
) -> None:
    """A process killed after an upload's object is stored but before its metadata is
    written (the commit point) must leave the previously acknowledged blob readable,
    through the registry and through a presigned URL, with its own bytes."""

    class Killed(BaseException):
        """Stands for SIGKILL: nothing after it runs, not even cleanup that catches
        Exception."""

    async def main() -> None:
        acknowledged = await store.put("m/v1/w", _aiter([b"A" * size]))
        real_put = store._client.put_object

        def dies_at_the_metadata(**kwargs: object) -> object:
            if str(kwargs["Key"]).endswith(".json"):
                raise Killed
            return real_put(**kwargs)

        store._client.put_object = dies_at_the_metadata  # type: ignore[method-assign]
        with pytest.raises(Killed):
            await store.put("m/v1/w", _aiter([b"B" * size]))
        store._client.put_object = real_put  # type: ignore[method-assign]

        info = await store.stat("m/v1/w")
        assert info == acknowledged
        assert await _read(store, "m/v1/w", size - 4, size) == b"AAAA"
        import httpx

        direct = httpx.get(store.direct_url(info, expires=60), headers={"Range": "bytes=0-3"})
        assert direct.status_code == 206
        assert direct.content == b"AAAA"
        # the next upload commits and deletes the object it replaced; only the object the
        # killed upload left behind is named by no ref
        final = await store.put("m/v1/w", _aiter([b"C" * size]))
        assert await _read(store, "m/v1/w", 0, 4) == b"CCCC"
        gone = httpx.get(store.direct_url(acknowledged, expires=60))
        assert gone.status_code == 404
        listed = store._client.list_objects_v2(Bucket=store.bucket, Prefix=store._join("objects"))
        named = store._located(final)[1]
        assert len(listed["Contents"]) == 2
        assert named in {o["Key"] for o in listed["Contents"]}

    anyio.run(main)


def test_refs_of_the_old_layout_and_delete(store: S3BlobStore) -> None:
    """A ref without ``object`` names ``blobs/<key>`` (the layout before per-upload
    objects): it stays readable, and an overwrite or a delete removes that object too."""

    async def main() -> None:
        for key, body in (("m/v1/old", b"legacy bytes"), ("m/v1/gone", b"legacy too")):
            legacy = store._legacy_data_key(key)
            put = store._client.put_object(Bucket=store.bucket, Key=legacy, Body=body)
            meta = {"size": len(body), "sha256": hashlib.sha256(body).hexdigest()}
            meta["etag"] = put["ETag"]
            store._client.put_object(
                Bucket=store.bucket, Key=store._meta_key(key), Body=json.dumps(meta).encode()
            )
            assert await _read(store, key, 0, len(body)) == body
        await store.put("m/v1/old", _aiter([b"new"]))
        assert await _read(store, "m/v1/old", 0, 3) == b"new"
        await store.delete("m/v1/gone")
        with pytest.raises(BlobNotFound):
            await store.stat("m/v1/gone")
        await store.delete("m/v1/old")
        left = store._client.list_objects_v2(Bucket=store.bucket, Prefix=store.prefix)
        assert left.get("Contents", []) == []

    anyio.run(main)
