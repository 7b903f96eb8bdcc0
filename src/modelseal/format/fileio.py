"""Whole-buffer positional reads and writes on file descriptors, and exact-length stream
reading.

``os.preadv``/``os.pwrite`` may transfer fewer bytes than asked; these loops finish the
job or fail with a clear error. Positional I/O lets worker threads share one descriptor
without a shared file offset. Streams (pipes, HTTP bodies) are read in one reused buffer,
wiped afterwards because it held plaintext.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import BinaryIO

from modelseal.crypto.aead import wipe
from modelseal.errors import FormatError

__all__ = ["pread_full", "pwrite_full", "read_exactly"]


def pread_full(fd: int, view: memoryview, offset: int) -> None:
    got = 0
    while got < len(view):
        n = os.preadv(fd, [view[got:]], offset + got)
        if n == 0:
            raise FormatError("sealed file ended early (changed while reading?)")
        got += n


def pwrite_full(fd: int, view: memoryview, offset: int) -> None:
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)


def read_exactly(src: BinaryIO, size: int, chunk_len: int) -> Iterator[memoryview]:
    """Yield ``src``'s bytes in chunks of at most ``chunk_len`` (views of one reused buffer:
    consume before the next step); the stream must hold exactly ``size`` bytes."""
    buf = bytearray(min(chunk_len, max(size, 1)))
    view = memoryview(buf)
    try:
        remaining = size
        while remaining:
            n = src.readinto(view[: min(len(view), remaining)])  # type: ignore[attr-defined]
            if not n:
                raise FormatError(f"input ended {remaining} bytes before its declared size")
            yield view[:n]
            remaining -= n
        if src.read(1):
            raise FormatError(f"input is longer than the declared {size} bytes")
    finally:
        wipe(buf)
