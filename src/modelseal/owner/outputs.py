"""Atomic outputs and careful inputs for the owner commands.

Everything is written under a hidden temporary name next to the destination and renamed
only when complete and authenticated, so a failure (wrong key, tampering, a full disk,
Ctrl-C) never leaves partial plaintext behind. Input and destination checks live here too,
so that every command refuses the same unsafe combinations with the same words.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from modelseal.errors import ConfigError, NotFound

__all__ = [
    "atomic_dir",
    "atomic_file",
    "check_not_nested",
    "new_file",
    "open_ro",
    "sha256_fd",
]

_HASH_CHUNK = 4 << 20
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def _check_replaceable(dst: Path, overwrite: bool, *, want_dir: bool) -> None:
    if dst.exists() or dst.is_symlink():
        if not overwrite:
            raise ConfigError(f"{dst} already exists; remove it or pass --force")
        if want_dir:
            wrong = dst.is_symlink() or not dst.is_dir()
        else:  # rename replaces a symlink itself, never its target
            wrong = dst.is_dir() and not dst.is_symlink()
        if wrong:
            kind = "a directory" if want_dir else "a file"
            raise ConfigError(f"{dst} exists and is not {kind}; refusing to replace it")
    if not dst.parent.is_dir():
        raise ConfigError(f"{dst.parent} does not exist; create it first")


def check_not_nested(src: Path, dst: Path) -> None:
    """Refuse a directory destination equal to, inside, or containing the source: sealing
    into the source would seal its own output next time, and replacing (``--force``) a
    destination that contains the source would delete the source."""
    a, b = src.resolve(), dst.resolve()
    if a == b or a in b.parents or b in a.parents:
        raise ConfigError(
            f"{dst} and {src} overlap (one is inside the other); choose a destination "
            "outside the source directory"
        )


@contextmanager
def atomic_file(dst: Path, *, mode: int, overwrite: bool) -> Iterator[int]:
    """Yield a descriptor of a temporary sibling of ``dst``; rename it to ``dst`` only if the
    block completes, delete it otherwise."""
    _check_replaceable(dst, overwrite, want_dir=False)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".partial", dir=dst.parent)
    except OSError as exc:
        raise ConfigError(f"cannot write into {dst.parent}: {exc.strerror}") from None
    done = False
    try:
        os.fchmod(fd, mode)
        yield fd
        done = True
    finally:
        os.close(fd)
        if done:
            os.replace(tmp, dst)
        else:
            Path(tmp).unlink(missing_ok=True)


@contextmanager
def atomic_dir(dst: Path, *, overwrite: bool) -> Iterator[Path]:
    """Yield a fresh temporary directory next to ``dst``; it becomes ``dst`` on success and
    is removed with everything in it on failure."""
    _check_replaceable(dst, overwrite, want_dir=True)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".partial", dir=dst.parent))
    except OSError as exc:
        raise ConfigError(f"cannot write into {dst.parent}: {exc.strerror}") from None
    done = False
    try:
        yield tmp
        done = True
    finally:
        if done:
            if dst.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".old", dir=dst.parent))
                os.replace(dst, old / "d")
                os.replace(tmp, dst)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, dst)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def open_ro(path: Path) -> int:
    """Open a regular file read-only, with the CLI's documented exit codes.

    O_NONBLOCK keeps a FIFO from blocking the open forever (no writer); anything but a
    regular file (FIFO, device, directory) is refused before a byte is read.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | _O_CLOEXEC)
    except FileNotFoundError:
        raise NotFound(f"{path} not found") from None
    except PermissionError:
        raise ConfigError(f"cannot read {path}: permission denied") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        kind = "a directory" if path.is_dir() else "not a regular file (FIFO, device, socket)"
        raise ConfigError(f"{path} is {kind}")
    os.set_blocking(fd, True)
    return fd


def new_file(path: Path, mode: int, *, dir_mode: int = 0o700) -> int:
    """Create ``path`` (never an existing file) and its missing parents."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=dir_mode)
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | _O_CLOEXEC, mode)


def sha256_fd(fd: int, size: int) -> str:
    """SHA-256 of the first ``size`` bytes (hashlib releases the GIL: runs beside AES)."""
    h = hashlib.sha256()
    buf = bytearray(min(_HASH_CHUNK, max(size, 1)))
    view = memoryview(buf)
    offset = 0
    try:
        while offset < size:
            n = os.preadv(fd, [view[: min(len(view), size - offset)]], offset)
            if n == 0:
                raise ConfigError("file shrank while it was being read")
            h.update(view[:n])
            offset += n
    finally:
        buf[:] = bytes(len(buf))
    return h.hexdigest()
