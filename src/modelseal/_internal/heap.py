"""Keep glibc's allocator from mapping fresh pages for every megabyte-sized buffer.

A FUSE server allocates and frees megabyte-sized buffers at the rate it answers reads:
libfuse ``malloc``\\ s a reply buffer of the request's size (up to 1 MiB) for every read,
and the binding's ``bytes`` result is another. glibc serves blocks at or above its mmap
threshold with a fresh ``mmap`` (every page faulted in and zeroed by the kernel, then
unmapped on ``free``), and returns the top of a heap to the kernel once more than its trim
threshold is free there. Its dynamic threshold usually learns to keep such blocks on the
heap, but two blocks freed together are enough to cross the default trim threshold, and
which path a block takes then depends on the order threads free them: the mount measured
1.4 GiB of fresh pages (378,000 minor faults) and 0.7 s more kernel CPU for one 2 GiB
sequential read in the unlucky order, against 12,500 faults with fixed thresholds.

:func:`keep_freed_blocks` fixes both thresholds with ``mallopt`` (the documented glibc
interface; it also switches the dynamic adjustment off). Freed blocks then stay on the
heap of the arena that freed them and are reused by the next read; what a heap may keep
free is bounded by ``trim_threshold`` per arena. On a C library without ``mallopt``
(musl) nothing changes and the function says so.
"""

from __future__ import annotations

import ctypes
import logging

__all__ = ["keep_freed_blocks"]

log = logging.getLogger(__name__)

#: ``mallopt`` parameters (glibc ``malloc.h``)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def keep_freed_blocks(mmap_threshold: int, trim_threshold: int) -> bool:
    """Serve blocks below ``mmap_threshold`` from the heap, and return a heap's top to the
    kernel only beyond ``trim_threshold`` free; True if the C library took both."""
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        log.debug("no mallopt in this C library: allocator thresholds unchanged")
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    mapped: int = mallopt(_M_MMAP_THRESHOLD, mmap_threshold)
    trimmed: int = mallopt(_M_TRIM_THRESHOLD, trim_threshold)
    done = mapped == 1 and trimmed == 1
    if not done:
        log.debug("mallopt refused the allocator thresholds: unchanged")
    return done
