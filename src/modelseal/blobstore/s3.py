"""S3-compatible blob store (boto3; AWS S3, Ceph RGW, ...), for scale-out registries.

Layout under ``s3://bucket/prefix``::

    <prefix>/objects/<32 hex>   the sealed bytes of one upload (multipart upload, ranged GET)
    <prefix>/meta/<key>.json    {"size", "sha256", "etag", "object"}: the blob's ref

Every upload writes a new object under a random name, and writing the metadata that names
it is the commit: S3 replaces an object atomically, so a reader sees the old ref or the new
one, each naming an object that is complete. Only then is the object the old ref named
deleted. A process killed at any moment therefore leaves every acknowledged blob readable
(and an object no ref names, at worst). Writing the bytes in place under the key, as an
earlier layout did (``<prefix>/blobs/<key>``, still read when a ref has no ``object``),
lost the acknowledged blob when an overwrite was cut off between bytes and metadata.

Uploads stream as multipart parts of ``part_size`` bytes while hashing, so memory stays at
one part; the digest is checked *before* the upload is completed, so a mismatch or an
oversize body never replaces the stored blob. A ranged read carries ``If-Match`` with the
object ETag recorded in the metadata, so a read never mixes two versions of a key. boto3 is
synchronous: every call runs in a worker thread.

Garbage: a writer killed (or failing) between its object and its ref leaves an object no
ref names. :meth:`S3BlobStore.collect_garbage` deletes such objects once they are older
than a grace period, measured by the server's clock: their ``LastModified`` against the
``Date`` of the server's own listing answer, never the local clock. Why that never deletes
an object a writer is about to commit:

- a writer starts timing (its local monotonic clock) before it creates the object, so the
  object's server age is never more than the time the writer has been running;
- a writer commits (writes the ref) only while that time is below ``commit_deadline``
  (default half the default grace period); past it, it deletes its object and fails with
  a retryable error instead, so a writer stalled for hours never commits;
- collection lists the old objects first and reads every ref after that (S3 and RGW are
  read-after-write consistent). An object it deletes was older than ``grace`` at the first
  listing and unnamed by the refs read later; a writer committing it after those reads
  would have been running for more than ``grace`` >= 2 x ``commit_deadline``, which the
  deadline forbids (the margin covers the commit request itself being slow).

So ``grace`` must be at least twice the writers' ``commit_deadline``: collection refuses a
smaller one. Abandoned multipart uploads (a writer killed mid-upload) are aborted by the
same age rule, using their ``Initiated`` time.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import secrets
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import anyio.to_thread

from modelseal._internal.bounded import load_json
from modelseal.blobstore.base import (
    DEFAULT_CHUNK,
    DEFAULT_GC_MAX_OBJECTS,
    DEFAULT_GRACE,
    BlobInfo,
    BlobTooLarge,
    DigestMismatch,
    GcReport,
    check_key,
)
from modelseal.errors import BackendError, BlobNotFound, ConfigError, FormatError, TransientError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

__all__ = ["S3BlobStore"]

T = TypeVar("T")

log = logging.getLogger(__name__)

#: 8 MiB parts: above S3's 5 MiB minimum, and the most memory one upload holds.
DEFAULT_PART_SIZE = 8 << 20
#: Metadata is ``{"size", "sha256", "etag"}``; the bucket is untrusted, so reads are capped.
_MAX_META_BYTES = 4096

_NOT_FOUND = {"NoSuchKey", "404", "NotFound"}
_CHANGED = {"PreconditionFailed", "412"}
#: A writer commits its object only this long (seconds) after it started writing it
DEFAULT_COMMIT_DEADLINE = DEFAULT_GRACE / 2


class S3BlobStore:
    """Blobs in an S3 bucket under a key prefix."""

    def __init__(
        self,
        client: S3Client,
        bucket: str,
        prefix: str = "",
        *,
        part_size: int = DEFAULT_PART_SIZE,
        commit_deadline: float = DEFAULT_COMMIT_DEADLINE,
    ) -> None:
        if part_size < 5 << 20:
            raise ConfigError("S3 multipart parts must be at least 5 MiB")
        if not commit_deadline > 0:
            raise ConfigError("the S3 commit deadline must be a positive number of seconds")
        self.commit_deadline = commit_deadline
        self._client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.part_size = part_size

    @classmethod
    def from_url(cls, url: str) -> S3BlobStore:
        """``s3://bucket/prefix?endpoint=http://host:port&region=us-east-1``.

        ``commit-deadline=SECONDS`` sets how long after starting an upload a writer may
        still commit it (see the module doc; garbage collection needs a grace period of at
        least twice this). Credentials come from boto3's usual chain (environment, config
        files, instance role); a URL never carries them.
        """
        try:
            import boto3
            from botocore.config import Config
        except ImportError as exc:
            raise ConfigError("the S3 blob store needs the 's3' extra (boto3)") from exc
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise ConfigError(f"not an s3://bucket URL: {url!r}")
        if parts.username or parts.password:
            raise ConfigError("put S3 credentials in the environment, not in the URL")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        unknown = set(query) - {"endpoint", "region", "commit-deadline"}
        if unknown:
            raise ConfigError(f"unknown s3 URL parameter(s): {', '.join(sorted(unknown))}")
        endpoint = query.get("endpoint")
        try:
            deadline = float(query.get("commit-deadline", DEFAULT_COMMIT_DEADLINE))
        except ValueError:
            raise ConfigError("commit-deadline must be a number of seconds") from None
        config = Config(
            retries={"max_attempts": 5, "mode": "standard"},
            max_pool_connections=32,
            s3={"addressing_style": "path" if endpoint else "auto"},
            signature_version="s3v4",
        )
        # a session of its own: boto3's default session resolves credentials once per
        # process and keeps them, so a second store (or a rotated key in the environment)
        # would silently sign with the first one's
        client = boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint,
            region_name=query.get("region", "us-east-1"),
            config=config,
        )
        return cls(client, parts.netloc, parts.path, commit_deadline=deadline)

    def __repr__(self) -> str:
        return f"S3BlobStore(bucket={self.bucket!r}, prefix={self.prefix!r})"

    def _legacy_data_key(self, key: str) -> str:
        return self._join("blobs", check_key(key))

    def _object_key(self, name: str) -> str:
        return self._join("objects", name)

    @staticmethod
    def _version(etag: str, object_key: str) -> str:
        """BlobInfo.version: the object's ETag and its S3 key (an ETag has no space)."""
        return f"{etag} {object_key}"

    @staticmethod
    def _located(info: BlobInfo) -> tuple[str, str]:
        """(ETag, S3 key) of the object ``info`` names."""
        etag, _, object_key = info.version.partition(" ")
        return etag, object_key

    def _meta_key(self, key: str) -> str:
        return self._join("meta", check_key(key) + ".json")

    def _join(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    async def _call(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        def run() -> T:
            return fn(*args, **kwargs)

        try:
            return await anyio.to_thread.run_sync(run)
        except Exception as exc:
            translated = _translate(exc)
            if translated is exc:
                raise
            raise translated from exc

    # -- put ---------------------------------------------------------------------------------

    async def put(
        self,
        key: str,
        chunks: AsyncIterable[bytes],
        *,
        max_size: int | None = None,
        expected_sha256: str | None = None,
    ) -> BlobInfo:
        started = time.monotonic()  # before the object exists: its age never exceeds ours
        meta_key = self._meta_key(key)
        name = secrets.token_hex(16)
        data_key = self._object_key(name)
        hasher = hashlib.sha256()
        size = 0
        buf = bytearray()
        upload_id: str | None = None
        parts: list[dict[str, Any]] = []
        completed = False
        try:
            async for chunk in chunks:
                size += len(chunk)
                if max_size is not None and size > max_size:
                    raise BlobTooLarge(f"blob larger than the limit of {max_size} bytes")
                hasher.update(chunk)
                buf += chunk
                while len(buf) >= self.part_size:
                    if upload_id is None:
                        created = await self._call(
                            self._client.create_multipart_upload,
                            Bucket=self.bucket,
                            Key=data_key,
                            ContentType="application/octet-stream",
                        )
                        upload_id = created["UploadId"]
                    body = bytes(buf[: self.part_size])
                    del buf[: self.part_size]
                    await self._upload_part(data_key, upload_id, parts, body)
            sha = hasher.hexdigest()
            if expected_sha256 is not None and expected_sha256.lower() != sha:
                raise DigestMismatch("uploaded bytes do not match the announced SHA-256")
            if upload_id is None:
                put = await self._call(
                    self._client.put_object,
                    Bucket=self.bucket,
                    Key=data_key,
                    Body=bytes(buf),
                    ContentType="application/octet-stream",
                )
                etag = put["ETag"]
            else:
                if buf:
                    await self._upload_part(data_key, upload_id, parts, bytes(buf))
                done = await self._call(
                    self._client.complete_multipart_upload,
                    Bucket=self.bucket,
                    Key=data_key,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                )
                etag = done.get("ETag") or await self._multipart_etag(data_key, parts)
            completed = True
            buf.clear()
            try:
                previous: BlobInfo | None = await self.stat(key)
            except (BlobNotFound, BackendError):  # none, or unreadable: nothing to delete
                previous = None
            meta = {"size": size, "sha256": sha, "etag": etag, "object": name}
            if time.monotonic() - started > self.commit_deadline:
                # garbage collection may already count the object as abandoned
                with contextlib.suppress(BlobNotFound, BackendError):
                    await self._call(self._client.delete_object, Bucket=self.bucket, Key=data_key)
                raise TransientError(
                    f"the upload took longer than the commit deadline of "
                    f"{self.commit_deadline:g} s; nothing was stored, retry"
                )
            await self._call(
                self._client.put_object,
                Bucket=self.bucket,
                Key=meta_key,
                Body=json.dumps(meta).encode("utf-8"),
                ContentType="application/json",
            )
            if previous is not None:  # no ref names it any more (see the module doc)
                await self._delete_object(previous)
            return BlobInfo(key=key, size=size, sha256=sha, version=self._version(etag, data_key))
        finally:
            if upload_id is not None and not completed:
                with contextlib.suppress(BackendError):
                    await self._call(
                        self._client.abort_multipart_upload,
                        Bucket=self.bucket,
                        Key=data_key,
                        UploadId=upload_id,
                    )

    async def _multipart_etag(self, data_key: str, parts: list[dict[str, Any]]) -> str:
        """The ETag of the object this multipart upload completed, when the server's answer
        left it out (Ceph RGW 16 answers ``<ETag></ETag>``).

        S3's multipart ETag is the MD5 of the parts' binary MD5s and ``-<part count>``; a HEAD
        conditional on that value proves the object is still the one uploaded here (a writer
        that replaced it in between gets a 412, which is a retryable conflict).
        """
        try:
            digests = b"".join(bytes.fromhex(p["ETag"].strip('"')) for p in parts)
        except ValueError:
            raise BackendError("the S3 server returned a part ETag that is not an MD5") from None
        etag = f'"{hashlib.md5(digests, usedforsecurity=False).hexdigest()}-{len(parts)}"'
        await self._call(self._client.head_object, Bucket=self.bucket, Key=data_key, IfMatch=etag)
        return etag

    async def _upload_part(
        self, data_key: str, upload_id: str, parts: list[dict[str, Any]], body: bytes
    ) -> None:
        """Upload the next part of a multipart upload and record its number and ETag."""
        number = len(parts) + 1
        res = await self._call(
            self._client.upload_part,
            Bucket=self.bucket,
            Key=data_key,
            UploadId=upload_id,
            PartNumber=number,
            Body=body,
        )
        parts.append({"PartNumber": number, "ETag": res["ETag"]})

    # -- read --------------------------------------------------------------------------------

    async def _delete_object(self, info: BlobInfo) -> None:
        with contextlib.suppress(BlobNotFound):
            await self._call(
                self._client.delete_object, Bucket=self.bucket, Key=self._located(info)[1]
            )

    def direct_url(self, info: BlobInfo, *, expires: int) -> str:
        """A presigned ``GetObject`` URL of ``info``'s object (SigV4, computed locally: no
        request). Only the method, bucket and key are signed, so clients add ``Range``;
        what they read is authenticated by the sealed format, not by this URL."""
        try:
            url: str = self._client.generate_presigned_url(
                "get_object",
                Params={"Bucket": self.bucket, "Key": self._located(info)[1]},
                ExpiresIn=expires,
            )
        except Exception as exc:  # botocore raises several unrelated types here
            raise BackendError(f"cannot presign an S3 URL: {type(exc).__name__}") from None
        return url

    async def stat(self, key: str) -> BlobInfo:
        meta_key = self._meta_key(key)
        try:
            obj = await self._call(self._client.get_object, Bucket=self.bucket, Key=meta_key)
            raw = await self._call(obj["Body"].read, _MAX_META_BYTES + 1)
        except BlobNotFound:
            raise BlobNotFound(f"no blob {key!r}") from None
        try:
            data = load_json(raw, what="blob metadata", max_bytes=_MAX_META_BYTES)
            size, sha, etag = data["size"], data["sha256"], data["etag"]
            name = data.get("object")
        except (FormatError, KeyError, TypeError, AttributeError) as exc:
            raise BackendError(f"corrupt blob metadata for {key!r}") from exc
        if (
            not isinstance(size, int)
            or not isinstance(sha, str)
            or not isinstance(etag, str)
            or " " in etag
            or not (name is None or _is_object_name(name))
        ):
            raise BackendError(f"corrupt blob metadata for {key!r}")
        data_key = self._legacy_data_key(key) if name is None else self._object_key(name)
        return BlobInfo(key=key, size=size, sha256=sha, version=self._version(etag, data_key))

    async def open_range(
        self, info: BlobInfo, start: int, end: int, *, chunk_size: int = DEFAULT_CHUNK
    ) -> AsyncIterator[bytes]:
        if not 0 <= start <= end <= info.size:
            raise ConfigError(f"range [{start}, {end}) outside blob of {info.size} bytes")
        if start == end:
            return
        etag, data_key = self._located(info)
        try:
            obj = await self._call(
                self._client.get_object,
                Bucket=self.bucket,
                Key=data_key,
                Range=f"bytes={start}-{end - 1}",
                IfMatch=etag,
            )
        except BlobNotFound:  # stat named it: a later upload replaced it and deleted it
            raise TransientError("blob changed while it was being read; retry") from None
        body = obj["Body"]
        try:
            remaining = end - start
            while remaining > 0:
                data: bytes = await self._call(body.read, min(chunk_size, remaining))
                if not data:
                    raise TransientError(f"blob {info.key!r} ended early")
                remaining -= len(data)
                yield data
        finally:
            body.close()

    async def list_blobs(self, prefix: str = "") -> AsyncIterator[BlobInfo]:
        meta_root = self._join("meta") + "/"
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": meta_root + prefix}
            if token is not None:
                kwargs["ContinuationToken"] = token
            page = await self._call(self._client.list_objects_v2, **kwargs)
            for item in page.get("Contents", []):
                name = item["Key"][len(meta_root) :]
                if not name.endswith(".json"):
                    continue
                try:
                    yield await self.stat(name[: -len(".json")])
                except (BlobNotFound, ConfigError):
                    continue
            if not page.get("IsTruncated"):
                return
            token = page.get("NextContinuationToken")

    async def delete(self, key: str) -> None:
        """Delete the ref, then its object (a crash between leaves an object no ref names)."""
        info = await self.stat(key)
        await self._call(self._client.delete_object, Bucket=self.bucket, Key=self._meta_key(key))
        await self._delete_object(info)

    async def aclose(self) -> None:
        await self._call(self._client.close)

    # -- garbage -----------------------------------------------------------------------------

    async def collect_garbage(
        self,
        *,
        grace: float = DEFAULT_GRACE,
        dry_run: bool = False,
        max_objects: int = DEFAULT_GC_MAX_OBJECTS,
        start_after: str = "",
    ) -> GcReport:
        """Delete objects no ref names, older than ``grace`` by the server's clock (see the
        module doc for why a commit racing with this never loses its object)."""
        if grace < 2 * self.commit_deadline:
            raise ConfigError(
                f"a grace period of {grace:g} s is shorter than twice the writers' commit "
                f"deadline ({self.commit_deadline:g} s): an upload in flight could be deleted"
            )
        if max_objects < 1:
            raise ConfigError("max_objects must be at least 1")
        report = GcReport(dry_run=dry_run, grace=grace)
        root = self._join("objects") + "/"
        old: dict[str, int] = {}
        token: str | None = None
        now: datetime | None = None
        while report.scanned < max_objects:
            kwargs: dict[str, Any] = {
                "Bucket": self.bucket,
                "Prefix": root,
                "MaxKeys": min(1000, max_objects - report.scanned),
            }
            if token is not None:
                kwargs["ContinuationToken"] = token
            elif start_after:
                kwargs["StartAfter"] = root + start_after
            page = await self._call(self._client.list_objects_v2, **kwargs)
            if now is None:
                now = _server_time(page)
            cutoff = now - timedelta(seconds=grace)
            for item in page.get("Contents", []):
                name = item["Key"][len(root) :]
                report.scanned += 1
                report.resume_after = name
                if not _is_object_name(name):
                    continue  # not an object this store wrote: never touched
                if item["LastModified"] < cutoff:
                    old[name] = int(item.get("Size", 0))
                else:
                    report.young += 1
            token = page.get("NextContinuationToken") if page.get("IsTruncated") else None
            if token is None:
                report.resume_after = None
                break
        # every ref, read after the listing above: what they name is kept
        named = await self._named_objects()
        for name, size in sorted(old.items()):
            if name in named:
                report.referenced += 1
                continue
            report.orphans += 1
            report.orphan_bytes += size
            if not dry_run:
                with contextlib.suppress(BlobNotFound):
                    await self._call(
                        self._client.delete_object, Bucket=self.bucket, Key=root + name
                    )
        await self._abort_stale_uploads(report, root, now, grace, max_objects)
        return report

    async def _named_objects(self) -> set[str]:
        """The object names every ref names. A ref that cannot be read stops collection:
        what it names is unknown, so nothing may be deleted."""
        named: set[str] = set()
        async for info in self.list_blobs():
            named.add(self._located(info)[1].rpartition("/")[2])
        return named

    async def _abort_stale_uploads(
        self, report: GcReport, root: str, now: datetime | None, grace: float, cap: int
    ) -> None:
        """Abort multipart uploads under ``objects/`` initiated more than ``grace`` ago."""
        page = await self._call(
            self._client.list_multipart_uploads,
            Bucket=self.bucket,
            Prefix=root,
            MaxUploads=min(1000, cap),
        )
        cutoff = (now or _server_time(page)) - timedelta(seconds=grace)
        uploads = page.get("Uploads", [])
        pages_left = _MAX_PART_PAGES_PER_RUN
        # the server's listing is bounded here, not by its honouring MaxUploads
        for upload in uploads[: min(1000, cap)] if isinstance(uploads, list) else []:
            if not _is_stale_upload(upload, root, cutoff):
                continue
            report.stale_uploads += 1
            held, used = await self._uploaded_bytes(
                upload["Key"], upload["UploadId"], min(_MAX_PART_PAGES, pages_left)
            )
            report.stale_upload_bytes += held
            pages_left -= used
            if not report.dry_run:
                with contextlib.suppress(BlobNotFound):
                    await self._call(
                        self._client.abort_multipart_upload,
                        Bucket=self.bucket,
                        Key=upload["Key"],
                        UploadId=upload["UploadId"],
                    )

    async def _uploaded_bytes(self, key: str, upload_id: str, pages: int) -> tuple[int, int]:
        """Bytes of the parts an abandoned upload holds (what aborting it frees), over at
        most ``pages`` pages of 1,000 parts (S3's limit is 10,000 parts), and the pages
        read. A run reads at most :data:`_MAX_PART_PAGES_PER_RUN` in all: past that the
        uploads are still aborted, their bytes no longer counted."""
        total, marker, used = 0, 0, 0
        while used < pages:
            used += 1
            try:
                page = await self._call(
                    self._client.list_parts,
                    Bucket=self.bucket,
                    Key=key,
                    UploadId=upload_id,
                    MaxParts=1000,
                    PartNumberMarker=marker,
                )
            except (BlobNotFound, BackendError) as exc:
                # the sizes only inform the report: an upload aborted meanwhile, or a
                # store that does not let us list parts, must not stop the collection
                log.debug("parts of an abandoned upload not counted: %s", exc)
                return total, used
            total += sum(
                size
                for part in page.get("Parts", [])
                if isinstance(size := part.get("Size"), int) and 0 <= size <= _MAX_PART_SIZE
            )
            following = page.get("NextPartNumberMarker")
            if not page.get("IsTruncated") or not isinstance(following, int) or following <= marker:
                break
            marker = following
        return total, used


def _is_stale_upload(upload: object, root: str, cutoff: datetime) -> bool:
    """An upload of the listing (hostile: any field may be missing or of another type)
    that is one of our objects' and was initiated before ``cutoff``."""
    if not isinstance(upload, dict):
        return False
    key, upload_id, initiated = upload.get("Key"), upload.get("UploadId"), upload.get("Initiated")
    return (
        isinstance(key, str)
        and key.startswith(root)
        and _is_object_name(key[len(root) :])
        and isinstance(upload_id, str)
        and isinstance(initiated, datetime)
        and initiated < cutoff
    )


#: pages of ``list_parts`` read per abandoned upload (10 x 1,000 = S3's largest upload)
_MAX_PART_PAGES = 10
#: pages of ``list_parts`` read by one gc run, over all its abandoned uploads
_MAX_PART_PAGES_PER_RUN = 100
#: S3's largest part: a listed size above it is not a real part's, and is not counted
_MAX_PART_SIZE = 5 << 30


def _server_time(response: Any) -> datetime:
    """The ``Date`` of a server answer: garbage ages are measured on the server's clock."""
    raw = response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    try:
        when = parsedate_to_datetime(raw) if isinstance(raw, str) else None
    except (TypeError, ValueError):
        when = None
    if when is None or when.tzinfo is None:
        raise BackendError("the S3 server's answer has no usable Date header")
    return when


def _is_object_name(name: object) -> bool:
    """32 lower-case hex digits, as :meth:`S3BlobStore.put` names objects (the bucket is
    untrusted: a ref must not name an object outside ``objects/``)."""
    return isinstance(name, str) and len(name) == 32 and all(c in "0123456789abcdef" for c in name)


def _translate(exc: Exception) -> Exception:
    """boto errors -> modelseal errors (messages carry codes, never request contents)."""
    from botocore import exceptions as boto_exc

    if isinstance(exc, boto_exc.ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if code in _NOT_FOUND:
            return BlobNotFound("no such blob")
        if code in _CHANGED:
            return TransientError("blob changed while it was being read; retry")
        if status >= 500 or code in {"SlowDown", "ServiceUnavailable", "InternalError"}:
            return TransientError(f"S3 error {code or status}")
        return BackendError(f"S3 error {code or status}")
    if isinstance(
        exc,
        boto_exc.EndpointConnectionError | boto_exc.ConnectionError | boto_exc.ReadTimeoutError,
    ):
        return TransientError("cannot reach the S3 endpoint")
    if isinstance(exc, boto_exc.BotoCoreError):
        return BackendError(f"S3 client error: {type(exc).__name__}")
    return exc
