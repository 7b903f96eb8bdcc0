"""A bug (an unhandled exception) in a route still answers in the app's error shape.

The e2e test (tests/e2e/test_hostile_input.py) covers 404/405/400 against real servers;
a 500 needs a route that fails, so these add one to the real apps in-process.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from modelseal.blobstore.local import LocalBlobStore
from modelseal.kbs.errors_http import install_error_handlers
from modelseal.protocol.kbs import ERROR_TYPE_PREFIX
from modelseal.registry.app import create_app as create_registry
from modelseal.registry.settings import RegistrySettings

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def _boom() -> None:
    raise KeyError("a bug")


async def _get(app: object, path: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        return await client.get(path)


async def test_kbs_bug_is_an_internal_error_in_both_shapes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from fastapi import FastAPI

    app = FastAPI()
    install_error_handlers(app)
    app.add_api_route("/kbs/v0/boom", _boom)
    app.add_api_route("/modelseal/v1/boom", _boom)
    r = await _get(app, "/kbs/v0/boom")
    assert r.status_code == 500
    assert r.json() == {"type": ERROR_TYPE_PREFIX + "InternalError", "detail": "internal error"}
    r = await _get(app, "/modelseal/v1/boom")
    assert r.status_code == 500
    assert r.json() == {
        "type": "https://modelseal.dev/problems/internal",
        "detail": "internal error",
    }
    assert r.headers["cache-control"] == "no-store"


async def test_registry_bug_is_an_internal_error(tmp_path: Path) -> None:
    settings = RegistrySettings(data_dir=tmp_path / "reg")
    app = create_registry(settings, LocalBlobStore(tmp_path / "reg" / "blobs"))
    app.add_api_route("/boom", _boom)
    r = await _get(app, "/boom")
    assert r.status_code == 500
    assert r.json() == {
        "type": "https://modelseal.dev/problems/internal",
        "detail": "internal error",
    }
