"""Run the KBS under uvicorn (uvloop + httptools when installed), HTTPS when configured."""

from __future__ import annotations

import logging

import uvicorn

from modelseal.kbs.app import create_app
from modelseal.kbs.settings import KbsSettings
from modelseal.kbs.state import KbsState

log = logging.getLogger("modelseal.kbs")


def build_server(settings: KbsSettings) -> uvicorn.Server:
    """Open the state in ``settings.data_dir`` and return a configured uvicorn server."""
    settings = settings.validated()
    state = KbsState.open(settings.data_dir, database_url=settings.database_url)
    app = create_app(settings, state)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        ssl_certfile=str(settings.tls_cert) if settings.tls_cert else None,
        ssl_keyfile=str(settings.tls_key) if settings.tls_key else None,
        loop="auto",
        http="auto",
        lifespan="off",
        access_log=False,
        log_config=None,
        server_header=False,
        timeout_keep_alive=30,
    )
    return uvicorn.Server(config)


def serve(settings: KbsSettings) -> None:
    """Serve until interrupted."""
    server = build_server(settings)
    scheme = "https" if settings.tls else "http"
    log.info("KBS listening on %s://%s:%d", scheme, settings.host, settings.port)
    server.run()
