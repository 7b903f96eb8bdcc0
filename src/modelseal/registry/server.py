"""Run the registry under uvicorn (one process; the blob store streams, so one is plenty).

uvicorn picks uvloop and httptools when installed (the ``server`` extra installs both):
with the large reads blob bodies stream in, uvloop writes them with less CPU than the
stdlib loop (half as much for the loader's ranged GETs; ``bench/registry_bench.py``).
"""

from __future__ import annotations

import logging

import uvicorn

from modelseal._internal.metrics import MetricsEndpoint, MetricsServer
from modelseal.blobstore.factory import open_blob_store
from modelseal.registry.app import create_app
from modelseal.registry.settings import RegistrySettings

__all__ = ["serve"]

log = logging.getLogger(__name__)


def serve(settings: RegistrySettings, *, metrics_endpoint: MetricsEndpoint | None = None) -> None:
    """Serve until interrupted, with ``/metrics`` on ``metrics_endpoint`` if given.
    Prints where the upload token lives, never the token."""
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
        # our handler (text or JSON, with request ids) prints uvicorn's records too, and
        # the HTTP edge writes the access lines
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=5,
        server_header=False,
    )
    exporter = MetricsServer(metrics_endpoint) if metrics_endpoint is not None else None
    if exporter is not None:
        log.warning("registry metrics on http://%s:%d/metrics", exporter.host, exporter.port)
    try:
        uvicorn.Server(config).run()
    finally:
        if exporter is not None:
            exporter.close()
