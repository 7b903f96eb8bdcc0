"""Run the registry under uvicorn (one process: blob bodies cost little CPU, see below).

uvicorn runs on uvloop with httptools (the ``server`` extra installs both). On that stack
and plain HTTP, local blob bodies are sent from memory maps of the objects
(:mod:`modelseal.registry.blob_response`): about the registry CPU of ``sendfile(2)``, through
public interfaces only. With TLS, or where uvloop or httptools is missing, bodies stream in
large reads, where uvloop still writes them with less CPU than the stdlib loop
(``bench/registry_bench.py``).
"""

from __future__ import annotations

import importlib.util
import logging

import uvicorn

from modelseal._internal.metrics import MetricsEndpoint, MetricsServer
from modelseal.blobstore.factory import open_blob_store
from modelseal.registry.app import create_app
from modelseal.registry.settings import RegistrySettings

__all__ = ["mapped_bodies_possible", "serve"]

log = logging.getLogger(__name__)


def mapped_bodies_possible() -> bool:
    """Whether uvloop and httptools, the stack mapped bodies rely on, are installed."""
    return all(importlib.util.find_spec(m) is not None for m in ("uvloop", "httptools"))


def serve(settings: RegistrySettings, *, metrics_endpoint: MetricsEndpoint | None = None) -> None:
    """Serve until interrupted, with ``/metrics`` on ``metrics_endpoint`` if given.
    Prints where the upload token lives, never the token."""
    store = open_blob_store(settings.blob_store_url, default_root=settings.blob_root)
    stack = mapped_bodies_possible()
    app = create_app(settings, store, mapped_bodies=stack and settings.tls_cert is None)
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
        loop="uvloop" if stack else "auto",
        http="httptools" if stack else "auto",
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
        log.warning("registry metrics on %s", exporter.url)
    try:
        uvicorn.Server(config).run()
    finally:
        if exporter is not None:
            exporter.close()
