"""The body of a blob ``GET``: bytes ``[start, end)`` of a stored object, streamed.

Every body goes through the app as a Starlette ``StreamingResponse`` over the store's
``open_range``, on the server's public ASGI interface. What that costs the registry in CPU
depends mostly on the read size: each read is a thread hand-off and a fresh ``bytes`` the
server then writes, so fewer, larger reads are cheaper. ``bench/registry_bench.py``
measures the candidates (``docs/benchmarks.md``); :data:`STREAM_CHUNK` is the pick.
"""

from __future__ import annotations

from typing import Final

from starlette.responses import Response, StreamingResponse

from modelseal.blobstore.base import BlobInfo, BlobStore, FileBackedStore

__all__ = ["STREAM_CHUNK", "blob_body"]

#: Read size of streamed bodies. 16 MiB, the loader's range size, makes each of its ranged
#: GETs one read: the least registry CPU measured for them, about a fifth less than 1 MiB
#: reads and a quarter of Starlette ``FileResponse``'s 64 KiB. Memory: at most two reads
#: (32 MiB) per response in flight, one being read and one in the server's write buffer.
STREAM_CHUNK: Final = 16 << 20


async def blob_body(
    store: BlobStore,
    info: BlobInfo,
    start: int,
    end: int,
    *,
    status_code: int,
    headers: dict[str, str],
) -> Response:
    """The response for bytes ``[start, end)`` of ``info``'s object.

    A local object whose size on disk differs from its record raises ``BackendError``
    (-> 503) here, before the status line: a damaged object is never answered with a
    ``200``/``206`` and a ``Content-Length`` it cannot fill. Were it damaged later, mid-body,
    the read fails and the server drops the connection short of that length.
    """
    if isinstance(store, FileBackedStore):
        await store.check_object(info)
    return StreamingResponse(
        store.open_range(info, start, end, chunk_size=STREAM_CHUNK),
        status_code=status_code,
        headers=headers,
        media_type="application/octet-stream",
    )
