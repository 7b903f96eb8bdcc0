"""Local-directory blob store (the embedded default), content-addressed.

Layout under the root::

    objects/<sha[:2]>/<sha>   immutable blob bytes, named by their SHA-256
    refs/<key>.ref            {"size": n, "sha256": hex}: which object a key points to
    tmp/                      uploads in progress

An upload streams into ``tmp/`` while hashing, is fsynced, renamed to its object name, and only
then the key's ref is replaced atomically (``os.replace``). So a reader always sees a complete
blob whose digest is known, an open download keeps reading the object it started with even if
the key is overwritten, and identical blobs are stored once. File I/O runs in worker threads
(``anyio.to_thread``) in chunks, so the event loop never blocks and memory stays constant.

A process killed between publishing an object and replacing its ref leaves an object no
ref names; one killed mid-upload leaves a file in ``tmp/``. :meth:`LocalBlobStore.collect_garbage`
removes both. Every step that publishes, unpublishes or collects objects holds an exclusive
``flock`` on ``gc.lock`` (and a thread lock), across every process on the directory, so
collection sees refs and objects at rest: an object it finds unreferenced is unreferenced,
and a later upload of the same bytes publishes the object again. Only files older than the
grace period (by mtime) are collected, so an upload still writing its temporary file (each
write refreshes the mtime) is never touched.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import threading
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

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
from modelseal.errors import BackendError, BlobNotFound, ConfigError, FormatError

__all__ = ["LocalBlobStore"]

_REF_SUFFIX = ".ref"
#: A reference is ``{"size": N, "sha256": hex}``; anything bigger is corrupt.
_MAX_META_BYTES = 4096
_WRITE_BUFFER = 4 << 20
_LOCK_FILE = "gc.lock"


class LocalBlobStore:
    """Blobs in a local directory (created 0700 if missing)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self._objects = self.root / "objects"
        self._refs = self.root / "refs"
        self._tmp = self.root / "tmp"
        # serialises "publish an object + point a ref at it" against "drop a ref + collect
        # its object when unreferenced" (both run in worker threads)
        self._lock = threading.Lock()
        try:
            for d in (self.root, self._objects, self._refs, self._tmp):
                d.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create blob directory {self.root}: {exc.strerror}") from exc

    def __repr__(self) -> str:
        return f"LocalBlobStore({str(self.root)!r})"

    # -- paths -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """This process's threads and every other process on the directory kept out."""
        with self._lock:
            fd = os.open(self.root / _LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)

    def _ref_path(self, key: str) -> Path:
        return self._refs / (check_key(key) + _REF_SUFFIX)

    def _object_path(self, sha256: str) -> Path:
        return self._objects / sha256[:2] / sha256

    # -- put ---------------------------------------------------------------------------------

    async def put(
        self,
        key: str,
        chunks: AsyncIterable[bytes],
        *,
        max_size: int | None = None,
        expected_sha256: str | None = None,
    ) -> BlobInfo:
        ref = self._ref_path(key)
        tmp = self._tmp / f"{uuid.uuid4().hex}.part"
        try:
            fh = await anyio.to_thread.run_sync(_open_exclusive, tmp)
        except OSError as exc:
            raise BackendError(f"cannot write to blob store: {exc.strerror}") from exc
        hasher = hashlib.sha256()
        size = 0
        pending = bytearray()
        done = False
        try:
            async for chunk in chunks:
                size += len(chunk)
                if max_size is not None and size > max_size:
                    raise BlobTooLarge(f"blob larger than the limit of {max_size} bytes")
                pending += chunk
                if len(pending) >= _WRITE_BUFFER:
                    data = bytes(pending)
                    pending.clear()
                    await _io(_hash_and_write, fh, hasher, data)
            if pending:
                await _io(_hash_and_write, fh, hasher, bytes(pending))
                pending.clear()
            await _io(_sync_close, fh)
            sha = hasher.hexdigest()
            if expected_sha256 is not None and expected_sha256.lower() != sha:
                raise DigestMismatch("uploaded bytes do not match the announced SHA-256")
            await _io(self._publish, tmp, ref, size, sha)
            done = True
            return BlobInfo(key=key, size=size, sha256=sha, version=sha)
        finally:
            if not fh.closed:
                fh.close()
            if not done:
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()

    def _publish(self, tmp: Path, ref: Path, size: int, sha: str) -> None:
        obj = self._object_path(sha)
        with self._exclusive():
            obj.parent.mkdir(mode=0o700, exist_ok=True)
            if obj.exists():
                tmp.unlink()
            else:
                tmp.rename(obj)
                _fsync_dir(obj.parent)
            old = _read_ref(ref)
            ref.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            ref_tmp = ref.parent / f".{ref.name}.{uuid.uuid4().hex}.tmp"
            with open(ref_tmp, "x", encoding="utf-8") as fh:
                json.dump({"size": size, "sha256": sha}, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(ref_tmp, ref)
            _fsync_dir(ref.parent)
            if old is not None and old["sha256"] != sha:
                self._collect(old["sha256"])

    # -- read --------------------------------------------------------------------------------

    async def stat(self, key: str) -> BlobInfo:
        ref = self._ref_path(key)
        try:
            data = await anyio.to_thread.run_sync(_read_ref, ref)
        except OSError as exc:
            raise BackendError(f"blob store read failed: {exc.strerror}") from exc
        if data is None:
            raise BlobNotFound(f"no blob {key!r}")
        return BlobInfo(key=key, size=data["size"], sha256=data["sha256"], version=data["sha256"])

    async def check_object(self, info: BlobInfo) -> None:
        os.close(await self.open_object(info))

    async def open_object(self, info: BlobInfo) -> int:
        path = self._object_path(info.version)
        try:
            fd, size = await anyio.to_thread.run_sync(_open_sized, path)
        except FileNotFoundError:
            raise BlobNotFound(f"no blob {info.key!r}") from None
        except OSError as exc:
            raise BackendError(f"blob store read failed: {exc.strerror}") from exc
        if size != info.size:
            os.close(fd)
            raise BackendError(f"blob {info.key!r} is {size} bytes on disk, not {info.size}")
        return fd

    async def open_range(
        self, info: BlobInfo, start: int, end: int, *, chunk_size: int = DEFAULT_CHUNK
    ) -> AsyncIterator[bytes]:
        if not 0 <= start <= end <= info.size:
            raise ConfigError(f"range [{start}, {end}) outside blob of {info.size} bytes")
        path = self._object_path(info.version)
        try:
            fd = await anyio.to_thread.run_sync(os.open, path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise BlobNotFound(f"no blob {info.key!r}") from None
        except OSError as exc:
            raise BackendError(f"blob store read failed: {exc.strerror}") from exc
        try:
            pos = start
            while pos < end:
                n = min(chunk_size, end - pos)
                try:
                    data = await anyio.to_thread.run_sync(os.pread, fd, n, pos)
                except OSError as exc:
                    raise BackendError(f"blob store read failed: {exc.strerror}") from exc
                if not data:
                    raise BackendError(f"blob {info.key!r} is shorter than recorded")
                pos += len(data)
                yield data
        finally:
            os.close(fd)

    async def list_blobs(self, prefix: str = "") -> AsyncIterator[BlobInfo]:
        keys = await anyio.to_thread.run_sync(self._list_keys, prefix)
        for key in keys:
            try:
                yield await self.stat(key)
            except BlobNotFound:
                continue

    def _list_keys(self, prefix: str) -> list[str]:
        keys: list[str] = []
        for dirpath, dirnames, filenames in os.walk(self._refs):
            dirnames.sort()
            rel_dir = Path(dirpath).relative_to(self._refs).as_posix()
            for name in sorted(filenames):
                if name.startswith(".") or not name.endswith(_REF_SUFFIX):
                    continue
                stem = name[: -len(_REF_SUFFIX)]
                key = stem if rel_dir == "." else f"{rel_dir}/{stem}"
                if key.startswith(prefix):
                    keys.append(key)
        return keys

    # -- delete ------------------------------------------------------------------------------

    async def delete(self, key: str) -> None:
        ref = self._ref_path(key)
        try:
            found = await anyio.to_thread.run_sync(self._delete, ref)
        except OSError as exc:
            raise BackendError(f"blob store delete failed: {exc.strerror}") from exc
        if not found:
            raise BlobNotFound(f"no blob {key!r}")

    def _delete(self, ref: Path) -> bool:
        with self._exclusive():
            data = _read_ref(ref)
            if data is None:
                return False
            ref.unlink()
            _prune_empty(ref.parent, self._refs)
            self._collect(data["sha256"])
            return True

    def _collect(self, sha: str) -> None:
        """Remove the object ``sha`` unless another ref still points at it (lock held)."""
        for key in self._list_keys(""):
            other = _read_ref(self._refs / (key + _REF_SUFFIX))
            if other is not None and other["sha256"] == sha:
                return
        with contextlib.suppress(FileNotFoundError):
            self._object_path(sha).unlink()

    async def aclose(self) -> None:
        return None

    # -- garbage -----------------------------------------------------------------------------

    async def collect_garbage(
        self,
        *,
        grace: float = DEFAULT_GRACE,
        dry_run: bool = False,
        max_objects: int = DEFAULT_GC_MAX_OBJECTS,
        start_after: str = "",
    ) -> GcReport:
        """Remove objects no ref names and abandoned temporary files, older than ``grace``
        seconds (see the module doc)."""
        if grace < 0 or max_objects < 1:
            raise ConfigError("grace must be >= 0 seconds and max_objects >= 1")
        report = GcReport(dry_run=dry_run, grace=grace)
        try:
            await anyio.to_thread.run_sync(self._gc, report, max_objects, start_after)
        except OSError as exc:
            raise BackendError(f"blob store garbage collection failed: {exc.strerror}") from exc
        return report

    def _gc(self, report: GcReport, cap: int, start_after: str) -> None:
        cutoff = time.time() - report.grace
        with self._exclusive():
            named = set()
            for key in self._list_keys(""):
                data = _read_ref(self._refs / (key + _REF_SUFFIX))  # corrupt: BackendError
                if data is not None:
                    named.add(data["sha256"])
            names = sorted(
                p.name
                for d in self._objects.iterdir()
                if d.is_dir()
                for p in d.iterdir()
                if p.name > start_after
            )
            for name in names[:cap]:
                report.scanned += 1
                path = self._object_path(name)
                st = path.stat()
                if st.st_mtime >= cutoff:
                    report.young += 1
                elif name in named:
                    report.referenced += 1
                else:
                    report.orphans += 1
                    report.orphan_bytes += st.st_size
                    if not report.dry_run:
                        path.unlink(missing_ok=True)
            report.resume_after = names[cap - 1] if len(names) > cap else None
            stale = [*self._tmp.glob("*.part"), *self._refs.rglob(".*.tmp")]
            for path in stale:
                try:
                    st = path.stat()
                except FileNotFoundError:  # its upload just ended
                    continue
                if st.st_mtime < cutoff:
                    report.stale_uploads += 1
                    report.stale_upload_bytes += st.st_size
                    if not report.dry_run:
                        path.unlink(missing_ok=True)


async def _io(fn: Callable[..., object], *args: Any) -> None:
    """Run blocking file I/O in a worker thread; OS failures become ``BackendError``."""
    try:
        await anyio.to_thread.run_sync(fn, *args)
    except OSError as exc:
        raise BackendError(f"blob store write failed: {exc.strerror or exc}") from exc


def _open_sized(path: Path) -> tuple[int, int]:
    """A read-only descriptor of ``path`` and the size of the file it refers to."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return fd, os.fstat(fd).st_size
    except BaseException:
        os.close(fd)
        raise


def _open_exclusive(path: Path) -> Any:
    return open(path, "xb", buffering=0)


def _hash_and_write(fh: Any, hasher: Any, data: bytes) -> None:
    hasher.update(data)
    view = memoryview(data)
    while view:
        n = fh.write(view)
        view = view[n:]


def _sync_close(fh: Any) -> None:
    os.fsync(fh.fileno())
    fh.close()


def _read_ref(ref: Path) -> dict[str, Any] | None:
    try:
        raw = ref.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        return None
    try:
        data = load_json(raw, what="blob reference", max_bytes=_MAX_META_BYTES)
        size, sha = data["size"], data["sha256"]
    except (FormatError, KeyError, TypeError) as exc:
        raise BackendError(f"corrupt blob reference {ref.name}") from exc
    if not isinstance(size, int) or not isinstance(sha, str) or len(sha) != 64:
        raise BackendError(f"corrupt blob reference {ref.name}")
    return {"size": size, "sha256": sha}


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def _prune_empty(path: Path, stop: Path) -> None:
    while path != stop and stop in path.parents:
        try:
            path.rmdir()
        except OSError:
            return
        path = path.parent
