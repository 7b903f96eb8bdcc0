"""Choose a blob store from a URL: ``file:///path``, a plain path, or ``s3://bucket/prefix``."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from modelseal.blobstore.base import BlobStore
from modelseal.blobstore.local import LocalBlobStore
from modelseal.errors import ConfigError

__all__ = ["open_blob_store"]


def open_blob_store(url: str | None, *, default_root: Path) -> BlobStore:
    """The store ``url`` names; ``None`` or empty means a local directory at ``default_root``.

    ``s3://bucket/prefix?endpoint=http://host:port&region=R`` selects S3 (needs the ``s3``
    extra); credentials come from the usual AWS environment/config chain, never from the URL.
    """
    if not url:
        return LocalBlobStore(default_root)
    parts = urlsplit(url)
    if parts.scheme == "s3":
        from modelseal.blobstore.s3 import S3BlobStore

        return S3BlobStore.from_url(url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ConfigError(f"file URL must be local: {url!r}")
        return LocalBlobStore(Path(unquote(parts.path)))
    if parts.scheme == "" or (len(parts.scheme) == 1 and url[1:3] in (":\\", ":/")):
        return LocalBlobStore(Path(url))
    raise ConfigError(f"unsupported blob store URL {url!r}: use a path, file:// or s3://")
