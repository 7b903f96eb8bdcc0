"""The one interface every sealed-blob store implements (local directory, S3).

Blobs are ciphertext only (the registry never sees a key). Keys are ``/``-separated relative
paths of validated segments (``modelseal.protocol.model_info.check_relpath``). Every
operation streams: ``put`` consumes an async iterator of chunks and hashes while writing;
``open_range`` yields chunks of at most ``chunk_size`` bytes, so memory stays constant in the
size of the blob.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import asdict, dataclass
from typing import Final, Protocol, runtime_checkable

from modelseal.errors import ConfigError
from modelseal.protocol.model_info import check_relpath

__all__ = [
    "DEFAULT_CHUNK",
    "BlobInfo",
    "BlobStore",
    "BlobTooLarge",
    "CollectingStore",
    "DEFAULT_GC_MAX_OBJECTS",
    "DEFAULT_GRACE",
    "GcReport",
    "DigestMismatch",
    "FileBackedStore",
    "RedirectingStore",
    "check_key",
]

#: 1 MiB: large enough to amortise per-chunk costs, small enough for constant memory.
DEFAULT_CHUNK: Final = 1 << 20
#: Garbage collection deletes only objects at least this old (seconds): a day, far longer
#: than any upload between its first byte and its commit.
DEFAULT_GRACE: Final = 24 * 3600
#: Objects one garbage collection run examines by default (a capped run can be resumed).
DEFAULT_GC_MAX_OBJECTS: Final = 100_000


class BlobTooLarge(ConfigError):
    """An upload exceeded the store's size limit; nothing was stored."""


class DigestMismatch(ConfigError):
    """An upload's SHA-256 differs from the digest its sender announced; nothing was stored."""


@dataclass(frozen=True, slots=True)
class BlobInfo:
    """What a store knows about one stored blob."""

    key: str
    size: int
    #: SHA-256 (lower hex) of the stored bytes, computed while they were written
    sha256: str
    #: store-specific identity of this exact object (local: sha256; S3: the object's ETag);
    #: ``open_range`` reads this object or fails, never a newer one with the same key
    version: str

    @property
    def etag(self) -> str:
        """Strong HTTP entity tag: the quoted SHA-256."""
        return f'"{self.sha256}"'


def check_key(key: str) -> str:
    """Validate a blob key (a relative path of safe segments) or raise ``ConfigError``."""
    return check_relpath(key, what="blob key")


@runtime_checkable
class BlobStore(Protocol):
    """Streaming blob storage. Implementations raise ``BlobNotFound`` for missing keys and
    ``BackendError`` for storage failures; they never hold a whole blob in memory."""

    async def put(
        self,
        key: str,
        chunks: AsyncIterable[bytes],
        *,
        max_size: int | None = None,
        expected_sha256: str | None = None,
    ) -> BlobInfo:
        """Store the streamed bytes under ``key``, replacing it atomically (readers see the old
        or the new blob, never a mix). Raises ``BlobTooLarge`` / ``DigestMismatch`` and then
        stores nothing."""
        ...

    async def stat(self, key: str) -> BlobInfo:
        """Size, digest and identity of ``key``; ``BlobNotFound`` when absent."""
        ...

    def open_range(
        self, info: BlobInfo, start: int, end: int, *, chunk_size: int = DEFAULT_CHUNK
    ) -> AsyncIterator[bytes]:
        """Yield bytes ``[start, end)`` of the object ``info`` describes, in chunks."""
        ...

    async def delete(self, key: str) -> None:
        """Remove ``key``; ``BlobNotFound`` when absent."""
        ...

    def list_blobs(self, prefix: str = "") -> AsyncIterator[BlobInfo]:
        """Every blob whose key starts with ``prefix`` (a key path prefix, e.g. ``m/v1/``)."""
        ...

    async def aclose(self) -> None:
        """Release clients and threads."""
        ...


@runtime_checkable
class FileBackedStore(Protocol):
    """A store whose objects are local files, which it can check before a body is sent."""

    async def check_object(self, info: BlobInfo) -> None:
        """Raise ``BlobNotFound`` when ``info``'s object is gone, ``BackendError`` when its
        size differs from ``info.size`` (a damaged object must not be answered with a
        ``Content-Length`` it cannot fill)."""
        ...

    async def open_object(self, info: BlobInfo) -> int:
        """A read-only file descriptor of ``info``'s object (the caller closes it), checked
        like :meth:`check_object` through that very descriptor, so the file it sends from is
        the file that was checked."""
        ...


@runtime_checkable
class RedirectingStore(Protocol):
    """A store whose objects clients can fetch themselves (S3 presigned URLs), so the
    registry can leave the data path."""

    def direct_url(self, info: BlobInfo, *, expires: int) -> str:
        """A URL that serves ``info``'s object (ranged GETs included) for ``expires``
        seconds, without further credentials."""
        ...


@dataclass
class GcReport:
    """What one garbage collection run found and did (``dry_run``: found only)."""

    dry_run: bool
    grace: float
    #: stored objects examined in this run (at most the run's cap)
    scanned: int = 0
    #: objects older than the grace period that a reference names (kept)
    referenced: int = 0
    #: objects younger than the grace period, never examined further (uploads in flight)
    young: int = 0
    #: unreferenced objects older than the grace period: deleted unless ``dry_run``
    orphans: int = 0
    orphan_bytes: int = 0
    #: abandoned uploads (S3 multipart uploads, local temporary files) older than the grace
    #: period: aborted or removed unless ``dry_run``
    stale_uploads: int = 0
    #: bytes the abandoned uploads hold (local temporary files, S3 multipart parts)
    stale_upload_bytes: int = 0
    #: where the next run starts (pass it as ``start_after``); None when the listing ended
    resume_after: str | None = None

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@runtime_checkable
class CollectingStore(Protocol):
    """A store that can leave objects no reference names (a crash between writing an
    object and committing its reference) and collect them."""

    async def collect_garbage(
        self,
        *,
        grace: float = DEFAULT_GRACE,
        dry_run: bool = False,
        max_objects: int = DEFAULT_GC_MAX_OBJECTS,
        start_after: str = "",
    ) -> GcReport:
        """Delete objects no reference names that are older than ``grace`` seconds, and
        abandoned uploads as old; examine at most ``max_objects`` objects, in key order
        after ``start_after`` (a run's ``resume_after`` continues where it stopped)."""
        ...
