"""Where a load puts plaintext: a directory (``modelseal load``) or memory (the SDK).

Both targets take the same sequence (:func:`modelseal.loader.loader.run_load`): the
pipeline asks the target for one writable file descriptor per model file, sized in
advance, writes authenticated runs into it with ``pwritev``, and the target makes the
files visible only once every file authenticated (:meth:`ModelTarget.commit`). On any
failure :meth:`ModelTarget.abort` destroys what was written.

* :class:`DirectoryTarget`: a memory-backed directory for an unchanged inference server
  (the Kubernetes initContainer pattern). Files go into a private temporary directory
  inside the destination and are renamed into place; they get :attr:`FileModes.file`
  and directories :attr:`FileModes.directory` (and :attr:`FileModes.group`), set
  explicitly, whatever the umask.
* :class:`MemoryTarget`: anonymous memory files (``memfd_create``) mapped into this
  process; nothing ever reaches a filesystem.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import secrets
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Protocol

from modelseal._internal.procfs import memory_limit
from modelseal.errors import ConfigError
from modelseal.loader.destination import (
    TEMP_PREFIX,
    FileModes,
    check_destination,
    check_memory_limit,
    prepare_destination,
    wipe_tree,
)
from modelseal.loader.receipt import LoadedFile, Timings, clear_ready, read_receipt


class ModelTarget(Protocol):
    """What the load sequence needs from a destination of plaintext."""

    def plan(self, paths: Sequence[str]) -> None:
        """Refuse a model that cannot be placed, before attesting (paths are relative)."""

    def reserve(self, plain_bytes: int) -> None:
        """Refuse a model that will not fit, before the first target file is created."""

    def open(self, relpath: str, size: int) -> int:
        """A writable fd for ``relpath`` of ``size`` bytes; the caller closes it."""

    def commit(self, files: Sequence[LoadedFile], timings: Timings) -> None:
        """Every file authenticated: make them visible."""

    def abort(self) -> None:
        """Destroy everything written (partial or unauthenticated plaintext)."""


def previous_entries(dest: Path) -> set[str]:
    """Top-level entries the last completed load placed in ``dest`` (from its receipt)."""
    previous = read_receipt(dest) or {}
    files = previous.get("files")
    if not isinstance(files, list):
        return set()
    return {
        PurePosixPath(f["path"]).parts[0]
        for f in files
        if isinstance(f, dict) and isinstance(f.get("path"), str) and f["path"]
    }


def check_placement(dest: Path, paths: Sequence[str]) -> list[str]:
    """Top-level names the model will occupy in ``dest``; refuse to clobber foreign files.

    Entries that a previous load placed (listed in its receipt) may be replaced.
    """
    tops = sorted({PurePosixPath(p).parts[0] for p in paths})
    owned = previous_entries(dest)
    clash = [t for t in tops if (dest / t).exists() and t not in owned]
    if clash:
        raise ConfigError(
            f"destination {dest} already holds {', '.join(clash)} (not from an earlier load); "
            "use an empty directory"
        )
    return tops


def place(tmp: Path, dest: Path, tops: Sequence[str], *, stale: set[str], overwrite: bool) -> None:
    """Move each top-level entry from ``tmp`` into ``dest`` with ``rename`` (same fs), then
    remove ``stale``: what an earlier load left that the new model does not have."""
    for name in tops:
        target = dest / name
        source = tmp / name
        if target.is_dir() and not target.is_symlink():
            wipe_tree(target, overwrite=overwrite)
        os.replace(source, target)
    for name in sorted(stale):
        if not name.startswith("."):
            wipe_tree(dest / name, overwrite=overwrite)


class DirectoryTarget:
    """A checked destination directory; plaintext is staged in a private temp dir in it.

    Creating the target checks the destination (memory-backed unless ``allow_disk``) and
    removes leftovers of an interrupted earlier load; it holds no plaintext until
    :meth:`open`.
    """

    def __init__(
        self,
        dest: Path,
        *,
        allow_disk: bool,
        modes: FileModes | None = None,
        timings: Timings | None = None,
    ) -> None:
        with (timings or Timings()).step("check_destination"):
            checked = check_destination(dest, allow_disk=allow_disk)
            prepare_destination(dest)
        self.dest = dest
        self.allow_disk = allow_disk
        self.modes = modes or FileModes()
        #: plaintext on a real disk is overwritten before it is unlinked
        self.overwrite = not checked.memory_backed
        self._tmp: Path | None = None
        self._dirs: set[Path] = set()

    def plan(self, paths: Sequence[str]) -> None:
        check_placement(self.dest, paths)

    def reserve(self, plain_bytes: int) -> None:
        check_destination(self.dest, allow_disk=self.allow_disk, needed_bytes=plain_bytes)

    def _staging(self) -> Path:
        if self._tmp is None:
            tmp = self.dest / f"{TEMP_PREFIX}{secrets.token_hex(6)}"
            tmp.mkdir(mode=0o700)
            self._tmp = tmp
        return self._tmp

    def _mkdirs(self, tmp: Path, parent: PurePosixPath) -> Path:
        path = tmp
        for part in parent.parts:
            path = path / part
            if path not in self._dirs:
                path.mkdir(exist_ok=True)  # FileExistsError if a file holds the name
                self.modes.apply_to_directory(path)
                self._dirs.add(path)
        return path

    def open(self, relpath: str, size: int) -> int:
        """Create ``relpath`` in the staging dir with :attr:`modes`, sized to ``size``."""
        tmp = self._staging()
        rel = PurePosixPath(relpath)
        path = self._mkdirs(tmp, rel.parent) / rel.name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            self.modes.apply_to_file(fd)
            os.ftruncate(fd, size)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def commit(self, files: Sequence[LoadedFile], timings: Timings) -> None:
        """Rename the model into the destination, replacing what an earlier load placed."""
        with timings.step("place"):
            tops = check_placement(self.dest, [f.path for f in files])
            stale = previous_entries(self.dest) - set(tops)
            clear_ready(self.dest)
            place(self._staging(), self.dest, tops, stale=stale, overwrite=self.overwrite)
            self.abort()  # the empty staging dir

    def abort(self) -> None:
        if self._tmp is not None:
            wipe_tree(self._tmp, overwrite=self.overwrite)
            self._tmp = None
            self._dirs.clear()


class MemFile:
    """One decrypted file in anonymous memory (memfd pages, mapped once)."""

    __slots__ = ("fd", "mm", "size")

    def __init__(self, name: str, size: int) -> None:
        self.fd = os.memfd_create(f"modelseal:{name}"[:200], os.MFD_CLOEXEC)
        self.size = size
        self.mm: mmap.mmap | None = None
        try:
            os.ftruncate(self.fd, size)
        except BaseException:
            os.close(self.fd)
            raise

    def map(self) -> None:
        if self.size:
            self.mm = mmap.mmap(self.fd, self.size, mmap.MAP_SHARED)
        os.close(self.fd)
        self.fd = -1

    def view(self) -> memoryview:
        return memoryview(self.mm) if self.mm is not None else memoryview(bytearray())

    def close(self) -> None:
        """Zero the pages, then unmap (if nobody still holds a view)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.mm is not None and not self.mm.closed:
            with memoryview(self.mm) as v:
                v[:] = bytes(len(v))
            with contextlib.suppress(BufferError):  # tensors still alive: freed when they die
                self.mm.close()


class MemoryTarget:
    """Anonymous memory files, mapped into this process after every file authenticated."""

    def __init__(self) -> None:
        self.files: dict[str, MemFile] = {}

    def plan(self, paths: Sequence[str]) -> None:
        """Memory has no foreign files to clobber."""

    def reserve(self, plain_bytes: int) -> None:
        """Refuse a model above this process's memory cgroup headroom: the memfd pages are
        charged to it as they are written and cannot be reclaimed."""
        check_memory_limit("anonymous memory (memfd) pages", plain_bytes, memory_limit())

    def open(self, relpath: str, size: int) -> int:
        mem = MemFile(relpath, size)
        self.files[relpath] = mem
        return os.dup(mem.fd)  # the pipeline closes its copy

    def commit(self, files: Sequence[LoadedFile], timings: Timings) -> None:
        for mem in self.files.values():
            mem.map()

    def abort(self) -> None:
        for mem in self.files.values():
            mem.close()
