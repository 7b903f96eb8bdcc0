"""The body of a blob ``GET``: bytes ``[start, end)`` of a stored object.

Every body goes through the app as a Starlette ``StreamingResponse`` on the server's public
ASGI interface, in one of two ways:

* **mapped** (a local object, plain HTTP, ``modelseal registry serve``'s uvicorn on uvloop
  with httptools): each chunk is a ``memoryview`` of a read-only ``mmap`` of the object.
  ``StreamingResponse`` passes memoryviews on as they are, uvicorn hands them to the
  transport, and uvloop writes them with ``write(2)`` straight from the mapping, so the
  bytes go from the page cache into the socket without a copy into the process: about the
  registry CPU that ``sendfile(2)`` took (``bench/registry_bench.py``, ``docs/benchmarks.md``).
* **streamed** (everything else: S3, HTTPS, other servers): the store's ``open_range``
  reads; each read is a thread hand-off and a fresh ``bytes`` the server then writes.

Why mapped bodies need that exact server stack: nothing in it reads the mapped bytes in
user space (uvloop sends any buffer by pointer, also what it queues; every blob body has a
``Content-Length``, so uvicorn never joins it into chunked framing). A file truncated under
a mapping makes a user-space read of the lost pages a ``SIGBUS`` that kills the process,
while the kernel's own copy for ``write(2)`` fails with ``EFAULT``, which only aborts that
response. TLS (encrypts the bytes in user space) and the stdlib loop (copies what it could
not send into its buffer) would read them, so they get streamed bodies. The objects are
immutable and the store never truncates one, so only a damaged disk or another local writer
could: the object is checked for its recorded size through the descriptor it is sent from,
before the status line, and anything later ends as a short body the client detects.
"""

from __future__ import annotations

import contextlib
import mmap
import os
from typing import Final

import anyio.to_thread
from starlette.responses import Response, StreamingResponse

from modelseal.blobstore.base import BlobInfo, BlobStore, FileBackedStore
from modelseal.errors import BackendError

__all__ = ["MAP_CHUNK", "STREAM_CHUNK", "blob_body"]

#: Read size of streamed bodies. 16 MiB, the loader's range size, makes each of its ranged
#: GETs one read: the least registry CPU measured for them, about a fifth less than 1 MiB
#: reads and a quarter of Starlette ``FileResponse``'s 64 KiB. Memory: at most two reads
#: (32 MiB) per response in flight, one being read and one in the server's write buffer.
STREAM_CHUNK: Final = 16 << 20

#: Size of one mapping of a mapped body: the server's write-buffer flow control pauses the
#: body between mappings, so at most about two (32 MiB of address space) are in flight.
MAP_CHUNK: Final = 16 << 20

#: ``madvise(MADV_POPULATE_READ)``, Linux >= 5.14 (value from the kernel's uapi headers;
#: Python 3.11's ``mmap`` module does not name it).
_MADV_POPULATE_READ: Final = getattr(mmap, "MADV_POPULATE_READ", 22)


async def blob_body(
    store: BlobStore,
    info: BlobInfo,
    start: int,
    end: int,
    *,
    status_code: int,
    headers: dict[str, str],
    mapped: bool = False,
) -> Response:
    """The response for bytes ``[start, end)`` of ``info``'s object.

    ``mapped`` asks for a mapped body (only for the server stack the module docstring names;
    a store whose objects are not local files streams anyway). A local object whose size on
    disk differs from its record raises ``BackendError`` (-> 503) here, before the status
    line: a damaged object is never answered with a ``200``/``206`` and a ``Content-Length``
    it cannot fill. Were it damaged later, mid-body, the server drops the connection short of
    that length.
    """
    if isinstance(store, FileBackedStore):
        if mapped:
            fd = await store.open_object(info)
            return StreamingResponse(
                _Mapped(fd, start, end, info.key),
                status_code=status_code,
                headers=headers,
                media_type="application/octet-stream",
            )
        await store.check_object(info)
    return StreamingResponse(
        store.open_range(info, start, end, chunk_size=STREAM_CHUNK),
        status_code=status_code,
        headers=headers,
        media_type="application/octet-stream",
    )


class _Mapped:
    """Bytes ``[start, end)`` of ``fd`` as views of read-only mappings of ``MAP_CHUNK`` bytes.

    Each mapping lives as long as the server holds its view (CPython frees it when the
    transport lets go) and is populated in a worker thread first, so a page that is not in
    the page cache is read from disk there, not inside the event loop's ``write(2)``.

    A class, not an async generator: it owns ``fd`` from before the status line, and a
    generator that never started (the client left first) or stopped half-way would keep
    the descriptor open until the loop finalised it; this one closes it at the end of the
    body or as soon as it is dropped, whichever comes first.
    """

    def __init__(self, fd: int, start: int, end: int, key: str) -> None:
        self._fd: int | None = fd
        self._pos = start
        self._end = end
        self._key = key

    def __aiter__(self) -> _Mapped:
        return self

    async def __anext__(self) -> memoryview:
        if self._fd is None or self._pos >= self._end:
            self.close()
            raise StopAsyncIteration
        pos = self._pos
        base = pos - pos % mmap.ALLOCATIONGRANULARITY
        length = min(MAP_CHUNK, self._end - pos) + pos - base
        try:
            region = mmap.mmap(self._fd, length, offset=base, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as exc:  # ValueError: the file shrank
            self.close()
            raise BackendError(f"blob {self._key!r} cannot be read: {exc}") from exc
        await anyio.to_thread.run_sync(_populate, region)
        self._pos = base + length
        return memoryview(region)[pos - base :]

    def close(self) -> None:
        """Close the descriptor (the mappings still held by the server stay valid)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __del__(self) -> None:
        self.close()


def _populate(region: mmap.mmap) -> None:
    """Fault the region's pages in (reading any that are not cached) without touching them."""
    try:
        region.madvise(_MADV_POPULATE_READ)
    except OSError:  # kernel before 5.14; or the file shrank (the write then fails short)
        with contextlib.suppress(OSError):
            region.madvise(mmap.MADV_WILLNEED)
