"""The registry app under one candidate server configuration, for ``registry_bench``.

``python -m bench.registry_server SERVER CHUNK DATA_DIR PORT`` serves the unchanged
registry app (``create_app`` over a ``LocalBlobStore``) on 127.0.0.1:PORT, streaming
ranges in reads of CHUNK bytes:

* ``uvicorn``: uvicorn with httptools on the asyncio loop (no body extension: every body
  streams through the app);
* ``uvicorn-uvloop``: the same on uvloop;
* ``granian``: Granian (one worker process, as ``modelseal registry serve`` runs it), which
  offers ``http.response.pathsend``: whole objects go out by path, other ranges stream.
"""

from __future__ import annotations

import sys
from pathlib import Path

import modelseal.registry.app as registry_app
from modelseal.registry.settings import RegistrySettings


def _app(settings: RegistrySettings) -> object:
    from modelseal.blobstore.local import LocalBlobStore

    return registry_app.create_app(settings, LocalBlobStore(settings.blob_root))


def main(server: str, chunk: int, data_dir: Path, port: int) -> None:
    # the read size of streamed ranges; the route reads this module global per request
    registry_app.STREAM_CHUNK = chunk  # type: ignore[misc]
    settings = RegistrySettings(data_dir=data_dir, port=port)
    if server.startswith("uvicorn"):
        import uvicorn

        loop = "uvloop" if server == "uvicorn-uvloop" else "asyncio"
        uvicorn.run(
            _app(settings),  # type: ignore[arg-type]
            host="127.0.0.1",
            port=port,
            http="httptools",
            loop=loop,
            log_level="warning",
        )
    elif server == "granian":
        from modelseal.registry.server import serve

        serve(settings)  # its worker is forked: it inherits STREAM_CHUNK as set above
    else:
        raise SystemExit(f"unknown server {server!r}")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]))
