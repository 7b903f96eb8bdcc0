"""Whole-buffer positional reads and writes on file descriptors.

``os.preadv``/``os.pwrite`` may transfer fewer bytes than asked; these loops finish the
job or fail with a clear error. Positional I/O lets worker threads share one descriptor
without a shared file offset.
"""

from __future__ import annotations

import os

from modelseal.errors import FormatError

__all__ = ["pread_full", "pwrite_full"]


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
