"""The FUSE operations of a mounted model: read-only, every byte authenticated first.

A plain class (no FUSE import): the binding (:mod:`modelseal.loader.mount.serve`) calls
these methods by name, and they can be tested without a kernel. Errors are ``OSError`` with
an errno, which the binding returns to the kernel: a segment that fails authentication, or
cannot be fetched, is ``EIO`` for the read that needs it, and nothing of that read is
returned. Files open with ``keep_cache``: their plaintext is authenticated and can never
change while mounted, so the kernel may keep it in its page cache across opens, and
``mmap`` (safetensors, llama.cpp, vLLM) works as on any read-only filesystem.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from modelseal.errors import DecryptionError, Error
from modelseal.loader.mount.store import SegmentStore
from modelseal.loader.mount.tree import Node, Tree

log = logging.getLogger(__name__)

__all__ = ["STATS_XATTR", "SealedFs"]

#: extended attribute of the mount's root: JSON counters (reads, cache, auth failures)
STATS_XATTR = "user.modelseal.stats"
#: extended attribute of the mount's root: the model digest the mount serves
DIGEST_XATTR = "user.modelseal.model_digest"
_BLOCK = 4096


@dataclass
class _Handle:
    """One open file: which store file it reads and where a sequential reader would go next."""

    file: int
    next_offset: int = 0


class SealedFs:
    """Operations over ``store`` with names from ``tree``; ``on_init`` runs once the kernel
    has initialised the connection (the mount is about to serve)."""

    #: timestamps in nanoseconds (the binding's modern convention)
    use_ns = True

    def __init__(
        self,
        store: SegmentStore,
        tree: Tree,
        *,
        model_digest: str,
        on_init: Callable[[], None] | None = None,
        attr_timeout: float = 3600.0,
    ) -> None:
        self.store = store
        self.tree = tree
        self.model_digest = model_digest
        self._on_init = on_init
        self._attr_timeout = attr_timeout
        self._uid = os.getuid()
        self._gid = os.getgid()
        self._time_ns = time.time_ns()
        self._handles: dict[int, _Handle] = {}
        self._next_handle = 1
        self._lock = threading.Lock()

    # -- lifetime ----------------------------------------------------------------------------

    def init_with_config(self, conn_info: Any, config: Any) -> None:
        """Names, sizes and contents never change: let the kernel cache lookups and
        attributes for long (``config`` is libfuse 3's ``struct fuse_config``)."""
        if config is not None:
            config.entry_timeout = self._attr_timeout
            config.attr_timeout = self._attr_timeout
            config.negative_timeout = self._attr_timeout
            config.kernel_cache = 1
        if self._on_init is not None:
            self._on_init()

    # -- names -------------------------------------------------------------------------------

    def _node(self, path: str) -> Node:
        node = self.tree.lookup(path)
        if node is None:
            raise OSError(errno.ENOENT, os.strerror(errno.ENOENT))
        return node

    def getattr(self, path: str, fh: Any = None) -> dict[str, int]:
        node = self._node(path)
        size = node.size if not node.is_dir else _BLOCK
        return {
            "st_mode": Tree.mode(node),
            "st_nlink": 2 + sum(c.is_dir for c in node.children.values()) if node.is_dir else 1,
            "st_size": size,
            "st_blocks": -(-size // 512),
            "st_blksize": _BLOCK,
            "st_uid": self._uid,
            "st_gid": self._gid,
            "st_atime": self._time_ns,
            "st_mtime": self._time_ns,
            "st_ctime": self._time_ns,
        }

    def readdir(self, path: str, fh: Any) -> Iterable[str]:
        node = self._node(path)
        if not node.is_dir:
            raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
        return [".", "..", *sorted(node.children)]

    def statfs(self, path: str) -> dict[str, int]:
        blocks = -(-sum(f.header.size for f in self.store.files) // _BLOCK)
        return {
            "f_bsize": _BLOCK,
            "f_frsize": _BLOCK,
            "f_blocks": blocks,
            "f_bfree": 0,
            "f_bavail": 0,
            "f_files": len(self.store.files) + self.tree.directories,
            "f_ffree": 0,
            "f_favail": 0,
            "f_namemax": 255,
        }

    # -- extended attributes: counters for operators and tests -------------------------------

    def listxattr(self, path: str) -> list[str]:
        return [STATS_XATTR, DIGEST_XATTR] if self._node(path) is self.tree.root else []

    def getxattr(self, path: str, name: str, *args: Any) -> bytes:
        if self._node(path) is self.tree.root:
            if name == STATS_XATTR:
                return json.dumps(self.store.counters(), sort_keys=True).encode()
            if name == DIGEST_XATTR:
                return self.model_digest.encode()
        raise OSError(errno.ENODATA, os.strerror(errno.ENODATA))

    # -- files -------------------------------------------------------------------------------

    def open(self, path: str, fi: Any) -> int:
        """Read-only opens only; ``fi`` is libfuse's ``struct fuse_file_info``."""
        node = self._node(path)
        if node.file is None:
            raise OSError(errno.EISDIR, os.strerror(errno.EISDIR))
        if fi.flags & os.O_ACCMODE != os.O_RDONLY:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        fi.keep_cache = 1
        with self._lock:
            handle = self._next_handle
            self._next_handle += 1
            self._handles[handle] = _Handle(node.file)
        fi.fh = handle
        return 0

    def release(self, path: str, fi: Any) -> int:
        with self._lock:
            self._handles.pop(fi.fh, None)
        return 0

    def read(self, path: str, size: int, offset: int, fi: Any) -> bytes:
        """Authenticated plaintext; EIO if any segment of the range fails."""
        with self._lock:
            handle = self._handles.get(fi.fh)
        if handle is None:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        header = self.store.files[handle.file].header
        # sequential: at (or within one segment of) where the last read ended; the
        # kernel's own read-ahead may answer requests slightly out of order
        sequential = abs(offset - handle.next_offset) <= header.segment_size
        handle.next_offset = offset + size
        try:
            data = self.store.read(handle.file, offset, size)
        except DecryptionError:
            raise OSError(errno.EIO, "segment failed authentication") from None
        except Error as exc:
            log.error("%s: read of %d bytes at %d failed: %s", path, size, offset, exc)
            raise OSError(errno.EIO, os.strerror(errno.EIO)) from None
        except Exception:
            log.exception("%s: read of %d bytes at %d failed", path, size, offset)
            raise OSError(errno.EIO, os.strerror(errno.EIO)) from None
        if sequential:
            self.store.read_ahead(handle.file, offset + len(data))
        return data
