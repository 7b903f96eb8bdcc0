"""Run the registry under uvicorn (one process; the blob store streams, so one is plenty)."""

from __future__ import annotations

import logging
from typing import Any

import uvicorn

from modelseal.blobstore.factory import open_blob_store
from modelseal.registry.app import create_app
from modelseal.registry.settings import RegistrySettings
from modelseal.registry.zerocopy import ZeroCopyHttpToolsProtocol, supported

__all__ = ["serve"]

log = logging.getLogger(__name__)


def serve(settings: RegistrySettings) -> None:
    """Serve until interrupted. Prints where the upload token lives, never the token."""
    store = open_blob_store(settings.blob_store_url, default_root=settings.blob_root)
    app = create_app(settings, store)
    scheme = "https" if settings.tls_cert else "http"
    log.warning(
        "modelseal registry on %s://%s:%d, blobs in %r, upload token in %s",
        scheme,
        settings.host,
        settings.port,
        store,
        settings.upload_token_path,
    )
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        ssl_certfile=str(settings.tls_cert) if settings.tls_cert else None,
        ssl_keyfile=str(settings.tls_key) if settings.tls_key else None,
        log_level="warning",
        timeout_graceful_shutdown=5,
        server_header=False,
        **_zero_copy_options(),
    )
    uvicorn.Server(config).run()


def _zero_copy_options() -> dict[str, Any]:
    """uvicorn settings that turn on ``sendfile`` for blob bodies, when this uvicorn allows.

    The stdlib event loop, not uvloop: asyncio's ``loop.sendfile`` on a plain TCP transport
    is the kernel's ``sendfile(2)``.
    """
    if not supported():
        log.warning("this uvicorn lacks what zero-copy blob sends need: streaming instead")
        return {}
    return {"http": ZeroCopyHttpToolsProtocol, "loop": "asyncio"}
