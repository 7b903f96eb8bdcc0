"""The allocator thresholds of a FUSE server: freed megabyte blocks are reused, not faulted in
again. Each case runs in a fresh interpreter (``mallopt`` is process-wide) and counts the
minor page faults of 200 reads' worth of buffers, allocated and freed in the order that
makes glibc's default heuristics trim its heap every time."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

SCRIPT = """
import ctypes, resource, sys
from modelseal._internal.heap import keep_freed_blocks
tuned = sys.argv[1] == "tuned" and keep_freed_blocks(4 << 20, 16 << 20)
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
size = 1 << 20
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(200):
    reply = libc.malloc(size)
    ctypes.memset(reply, 1, size)
    result = libc.malloc(size)
    ctypes.memset(result, 1, size)
    libc.free(reply)
    libc.free(result)
print(int(tuned), resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""

pytestmark = pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc", reason="the thresholds are glibc's (mallopt)"
)


def _faults(mode: str) -> tuple[bool, int]:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True
    )
    tuned, faults = done.stdout.split()
    return tuned == "1", int(faults)


def test_freed_blocks_are_reused_instead_of_faulted_in_again() -> None:
    tuned, few = _faults("tuned")
    assert tuned
    # 200 x 2 MiB written: 102,400 pages if every block were fresh
    assert few < 2_000
    untuned, many = _faults("default")
    assert not untuned
    assert many > 10 * few  # the pattern does defeat the default heuristics
