"""The registry app under one candidate server configuration, for ``registry_bench``.

``python -m bench.registry_server SERVER CHUNK DATA_DIR PORT`` serves the registry app
(``create_app`` over a ``LocalBlobStore``, bodies streamed rather than mapped) on
127.0.0.1:PORT, in reads of CHUNK bytes:

* ``uvicorn``: uvicorn with httptools on the stdlib asyncio loop;
* ``uvicorn-uvloop``: the same on uvloop (the stack ``modelseal registry serve`` runs,
  which sends local bodies from memory maps instead);
* ``granian``: Granian, one worker process, whose ASGI scope offers
  ``http.response.pathsend``. The registry does not use that extension (this benchmark
  found it costlier than streaming under uvicorn), so this candidate swaps in a body that
  does: a whole-object body goes out as a ``pathsend`` of the object's file, which Granian
  reads and writes from Rust; partial ranges stream as with the others.
"""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path
from typing import Any

import modelseal.registry.app as registry_app
import modelseal.registry.blob_response as blob_response
from modelseal.blobstore.base import BlobInfo, BlobStore
from modelseal.blobstore.local import LocalBlobStore
from modelseal.registry.settings import RegistrySettings

PATHSEND = "http.response.pathsend"


def _app(settings: RegistrySettings) -> Any:
    return registry_app.create_app(settings, LocalBlobStore(settings.blob_root))


async def _pathsend_body(
    store: BlobStore, info: BlobInfo, start: int, end: int, **response: Any
) -> Any:
    """``blob_body``, except that a whole object is sent by path (``pathsend``)."""
    from starlette.responses import Response
    from starlette.types import Receive, Scope, Send

    response.pop("mapped", None)  # the app's candidates here stream, never map

    if not (isinstance(store, LocalBlobStore) and start == 0 and end == info.size):
        return await blob_response.blob_body(store, info, start, end, **response)
    await store.check_object(info)
    path = str(store._object_path(info.version))

    class PathSend(Response):
        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            assert PATHSEND in scope.get("extensions", {}), "server does not offer pathsend"
            start_message = {"type": "http.response.start", "status": self.status_code}
            await send({**start_message, "headers": self.raw_headers})
            await send({"type": PATHSEND, "path": path})

    return PathSend(**response)


def main(server: str, chunk: int, data_dir: Path, port: int) -> None:
    # read per request from the module (a forked Granian worker inherits both patches)
    blob_response.STREAM_CHUNK = chunk  # type: ignore[misc]
    settings = RegistrySettings(data_dir=data_dir, port=port)
    if server.startswith("uvicorn"):
        import uvicorn

        loop = "uvloop" if server == "uvicorn-uvloop" else "asyncio"
        uvicorn.run(
            _app(settings),
            host="127.0.0.1",
            port=port,
            http="httptools",
            loop=loop,
            log_level="warning",
        )
    elif server == "granian":
        from granian import Granian
        from granian.constants import Interfaces

        registry_app.blob_body = _pathsend_body  # type: ignore[assignment]
        target = Granian("registry", address="127.0.0.1", port=port, interface=Interfaces.ASGI)
        target.serve(target_loader=partial(_app, settings), wrap_loader=False)
    else:
        raise SystemExit(f"unknown server {server!r}")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]))
