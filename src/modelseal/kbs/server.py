"""Run the KBS under uvicorn (uvloop + httptools when installed), HTTPS when configured.

With ``workers > 1`` uvicorn supervises that many processes on one socket. The parent opens
the state first (data dir, KEK, admin credential, tables, token-signing key) so the workers
only ever open existing files; settings reach the workers through one environment variable
of JSON, and each worker builds its app with :func:`app_factory`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any

import uvicorn
from starlette.types import ASGIApp

from modelseal.crypto.signing import TokenSigningKey
from modelseal.errors import ConfigError
from modelseal.kbs.app import create_app, serving_app
from modelseal.kbs.settings import KbsSettings
from modelseal.kbs.state import KbsState

log = logging.getLogger("modelseal.kbs")

SETTINGS_ENV = "MODELSEAL_KBS_WORKER_SETTINGS"
MAX_WORKERS = 64


def _uvicorn_options(settings: KbsSettings) -> dict[str, Any]:
    return {
        "host": settings.host,
        "port": settings.port,
        "ssl_certfile": str(settings.tls_cert) if settings.tls_cert else None,
        "ssl_keyfile": str(settings.tls_key) if settings.tls_key else None,
        "loop": "auto",
        "http": "auto",
        "lifespan": "off",
        "access_log": False,
        "log_config": None,
        "server_header": False,
        "timeout_keep_alive": 30,
    }


def settings_to_env(settings: KbsSettings) -> str:
    return json.dumps(
        {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(settings).items()}
    )


def settings_from_env(text: str) -> KbsSettings:
    try:
        raw = json.loads(text)
        paths = {f.name for f in dataclasses.fields(KbsSettings) if "Path" in str(f.type)}
        values: dict[str, Any] = {
            k: Path(v) if k in paths and v is not None else v for k, v in raw.items()
        }
        return KbsSettings(**values).validated()
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"invalid {SETTINGS_ENV}") from exc


def app_factory() -> ASGIApp:
    """Build one worker's app from the settings the supervisor put into the environment."""
    text = os.environ.get(SETTINGS_ENV)
    if not text:
        raise ConfigError(f"{SETTINGS_ENV} is not set; start workers with `modelseal kbs serve`")
    settings = settings_from_env(text)
    logging.getLogger("modelseal").setLevel(os.environ.get("MODELSEAL_LOG_LEVEL", "INFO").upper())
    state = KbsState.open(settings.data_dir, database_url=settings.database_url)
    return serving_app(create_app(settings, state))


def build_server(settings: KbsSettings) -> uvicorn.Server:
    """Open the state in ``settings.data_dir`` and return a configured uvicorn server."""
    settings = settings.validated()
    state = KbsState.open(settings.data_dir, database_url=settings.database_url)
    app = serving_app(create_app(settings, state))
    return uvicorn.Server(uvicorn.Config(app, **_uvicorn_options(settings)))


def serve(settings: KbsSettings, *, workers: int = 1) -> None:
    """Serve until interrupted, in this process or in ``workers`` processes."""
    if not 1 <= workers <= MAX_WORKERS:
        raise ConfigError(f"--workers must be between 1 and {MAX_WORKERS}")
    scheme = "https" if settings.tls else "http"
    log.info("KBS listening on %s://%s:%d", scheme, settings.host, settings.port)
    if workers == 1:
        build_server(settings).run()
        return
    settings = settings.validated()
    state = KbsState.open(settings.data_dir, database_url=settings.database_url)
    state.close()
    TokenSigningKey.load_or_create(settings.signing_key_path)
    os.environ[SETTINGS_ENV] = settings_to_env(settings)
    uvicorn.run(
        "modelseal.kbs.server:app_factory",
        factory=True,
        workers=workers,
        **_uvicorn_options(settings),
    )
