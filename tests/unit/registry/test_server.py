"""What ``modelseal registry serve`` hands uvicorn: the stack mapped blob bodies rely on,
and mapped bodies only where nothing in the process reads the mapped bytes (never TLS).

uvicorn's ``Server.run`` is replaced by a recorder, so no socket is opened; the e2e tests
run the real server.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import uvicorn
from tests.conftest import self_signed_cert

from modelseal.registry import server
from modelseal.registry.settings import RegistrySettings


def _served(monkeypatch: pytest.MonkeyPatch, settings: RegistrySettings) -> uvicorn.Config:
    configs: list[uvicorn.Config] = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, *a, **k: configs.append(self.config))
    server.serve(settings)
    (config,) = configs
    return config


def test_plain_http_on_uvloop_and_httptools_maps_bodies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert server.mapped_bodies_possible()  # the server extra is installed for the tests
    config = _served(monkeypatch, RegistrySettings(data_dir=tmp_path / "data"))
    assert (config.loop, config.http) == ("uvloop", "httptools")
    assert config.app.state.mapped_bodies is True  # type: ignore[union-attr]


def test_tls_never_maps_bodies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """TLS encrypts the body in user space: a mapped page lost to truncation would be a
    SIGBUS there, so HTTPS bodies stream."""
    cert, key = self_signed_cert(tmp_path)
    settings = RegistrySettings(data_dir=tmp_path / "data", tls_cert=cert, tls_key=key)
    config = _served(monkeypatch, settings)
    assert config.ssl_certfile == str(cert)
    assert config.app.state.mapped_bodies is False  # type: ignore[union-attr]


def test_without_uvloop_or_httptools_bodies_stream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server, "mapped_bodies_possible", lambda: False)
    config = _served(monkeypatch, RegistrySettings(data_dir=tmp_path / "data"))
    assert (config.loop, config.http) == ("auto", "auto")
    assert config.app.state.mapped_bodies is False  # type: ignore[union-attr]
