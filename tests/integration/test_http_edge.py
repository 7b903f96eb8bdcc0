"""Every route of every HTTP app answers the edge's failures in its app's documented shape.

The apps (the KBS with its RCAR, admin, Trustee-admin, transfer and Intel Trust Authority
registration routes; the registry)
are walked route by route from their route tables, so a route added later is covered
without editing this test. For each route: a path next to it that no route serves (404),
a method no route allows on it (405, with ``Allow``), a declared ``Content-Length`` over
the app's limit, and for routes that take a body, a chunked body one byte over the
route's own cap (the streaming reader). Each answer must be a problem document of the
table that serves it: its ``type`` prefix, exactly ``type`` and ``detail`` (ITA's routes:
exactly ``error``), and the
table's headers (``Cache-Control: no-store`` and ``WWW-Authenticate`` for the admin API,
``Retry-After`` on 503 for Trustee's shape).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.routing import Route

from modelseal._internal.clock import FixedClock
from modelseal._internal.http_edge import ErrorTable
from modelseal.blobstore.local import LocalBlobStore
from modelseal.errors import BackendError, TokenError
from modelseal.kbs.admin_api import MAX_ADMIN_BODY
from modelseal.kbs.admin_auth import mint_admin_token
from modelseal.kbs.app import create_app as create_kbs
from modelseal.kbs.errors_http import ADMIN_ERRORS, ITA_ERRORS, RCAR_ERRORS, is_ita_path, table_for
from modelseal.kbs.ita_api import MAX_ITA_BODY
from modelseal.kbs.settings import KbsSettings
from modelseal.kbs.state import KbsState
from modelseal.kbs.transfer_api import MAX_TRANSFER_BODY
from modelseal.protocol.kbs import ERROR_TYPE_PREFIX
from modelseal.registry.app import REGISTRY_ERRORS
from modelseal.registry.app import create_app as create_registry
from modelseal.registry.settings import RegistrySettings

KBS_LIMIT = 4096
RECORD_LIMIT = 2048
BLOB_LIMIT = 8192
#: the documented answer to a body over the limit: Trustee's SerdeError / the admin API's
#: bad-request (400) in the KBS, 413 in the registry
TOO_LARGE_STATUS = {"kbs": 400, "registry": 413}
#: modelseal's one problem ``type`` prefix (admin API and registry)
MODELSEAL_PREFIX = "https://modelseal.dev/problems/"
#: headers on every problem of each documented shape (by error table)
DOCUMENTED_HEADERS: dict[str, dict[str, str]] = {
    "rcar": {},
    "admin": {"Cache-Control": "no-store"},
    "registry": {},
    "ita": {"Cache-Control": "no-store"},
}


@dataclass
class App:
    name: str
    app: FastAPI
    #: the table of answers made outside any route (unknown path, wrong method, body limit)
    framework_table: Any
    #: credentials that get a request past authentication to its body
    auth: dict[str, str]

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        async def go() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                return await client.request(method, path, **kwargs)

        return asyncio.run(go())


@pytest.fixture(scope="module")
def apps(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[App]]:
    root = tmp_path_factory.mktemp("edge")
    clock = FixedClock()
    state = KbsState.open(root / "kbs", clock=clock)
    settings = KbsSettings(data_dir=root / "kbs", max_body_bytes=KBS_LIMIT).validated()
    kbs = create_kbs(settings, state, clock=clock)
    token = mint_admin_token(state.admin_key, role="admin", ttl=300, now=clock.now())
    reg_settings = RegistrySettings(
        data_dir=root / "reg", max_record_size=RECORD_LIMIT, max_blob_size=BLOB_LIMIT
    )
    registry = create_registry(reg_settings, LocalBlobStore(root / "reg" / "blobs"))
    upload = registry.state.registry.upload_token
    yield [
        App("kbs", kbs, table_for, {"Authorization": f"Bearer {token}"}),
        App(
            "registry", registry, lambda _p: REGISTRY_ERRORS, {"Authorization": f"Bearer {upload}"}
        ),
    ]
    state.close()


@dataclass(frozen=True)
class Mounted:
    """A route with the path it is served at (its router's mount prefix included)."""

    path: str
    route: APIRoute | Route

    @property
    def methods(self) -> set[str]:
        return set(self.route.methods or ())

    @property
    def error_table(self) -> ErrorTable | None:
        """The table the route answers from (set by the edge's guard)."""
        table = getattr(self.route.endpoint, "error_table", None)
        return getattr(self.route, "error_table", table)


def _routes(app: FastAPI) -> list[Mounted]:
    """Every API route of ``app``. FastAPI keeps an included router as one entry that
    holds the original router and its mount prefix, so the walk descends into those."""

    def walk(routes: list[Any], prefix: str) -> Iterator[Mounted]:
        for r in routes:
            if isinstance(r, APIRoute | Route):
                yield Mounted(prefix + r.path, r)
            elif hasattr(r, "original_router"):
                yield from walk(r.original_router.routes, prefix + r.include_context.prefix)

    return list(walk(app.routes, ""))


def _concrete(template: str) -> str:
    return re.sub(r"\{(\w+)(:\w+)?\}", lambda m: f"{m.group(1)}0", template)


def _unknown_next_to(template: str) -> str:
    """The route's path with its last fixed segment renamed: served by no route."""
    parts = template.split("/")
    last = max(i for i, p in enumerate(parts) if p and not p.startswith("{"))
    parts[last] += "-no-such"
    return _concrete("/".join(parts))


def _check_shape(r: httpx.Response, table: ErrorTable, status: int) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.text[:300])
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    if table is ITA_ERRORS:  # Intel Trust Authority's shape: {"error": text}, Go's newline
        assert set(body) == {"error"}, body
        assert r.content.endswith(b"}\n")
        body = {"type": "", "detail": body["error"]}
    assert set(body) == {"type", "detail"}, body
    assert body["type"].startswith(table.shape.prefix), body
    assert isinstance(body["detail"], str)
    assert body["detail"]
    for name, value in DOCUMENTED_HEADERS[table.name].items():
        assert r.headers[name] == value, (name, dict(r.headers))
    return body


def _stream_cap(app: App, route: Mounted) -> int | None:
    """The documented cap of the chunked body a route reads (None: it reads no body)."""
    if app.name == "registry":
        if route.path.startswith("/blobs/"):
            return BLOB_LIMIT if "PUT" in route.methods else None
        return RECORD_LIMIT if "PUT" in route.methods else None
    if not route.methods & {"POST", "PUT"}:
        return None
    if route.path.endswith("/transfer"):
        return MAX_TRANSFER_BODY
    if is_ita_path(route.path):
        # the refused key export (POST /kbs/v1/keys/<id>) reads no body
        return None if route.path.endswith("}") and "PUT" not in route.methods else MAX_ITA_BODY
    if route.path in ("/kbs/v0/auth", "/kbs/v0/attest"):
        return KBS_LIMIT
    if route.path.endswith(("/revoke", "/rotate")):
        return None  # actions without a body
    return MAX_ADMIN_BODY


async def _chunks(size: int) -> AsyncIterator[bytes]:
    step = 64 << 10
    for start in range(0, size, step):
        yield b"x" * min(step, size - start)


def test_every_route_is_guarded_by_its_apps_table(apps: list[App]) -> None:
    tables = {"kbs": {RCAR_ERRORS, ADMIN_ERRORS, ITA_ERRORS}, "registry": {REGISTRY_ERRORS}}
    for app in apps:
        routes = _routes(app.app)
        assert routes, app.name
        for route in routes:
            table = route.error_table
            assert table in tables[app.name], (app.name, route.path)


def test_unknown_paths_wrong_methods_and_oversized_bodies(apps: list[App]) -> None:
    walked = 0
    for app in apps:
        for route in _routes(app.app):
            walked += 1
            path = _concrete(route.path)

            unknown = _unknown_next_to(route.path)
            table = app.framework_table(unknown)
            body = _check_shape(app.request("GET", unknown), table, 404)
            if table is not ITA_ERRORS:
                assert body["type"] == table.shape.prefix + table.framework_problems[404].kind

            # PATCH is served by no route of any app
            assert not any("PATCH" in r.methods for r in _routes(app.app))
            r = app.request("PATCH", path)
            table = app.framework_table(path)
            _check_shape(r, table, 405)
            assert r.headers["allow"], route.path

            if not route.methods & {"POST", "PUT"}:
                continue
            method = sorted(route.methods & {"POST", "PUT"})[0]
            table = route.error_table
            assert table is not None, route.path
            cap = _stream_cap(app, route)
            # a declared length over the limit is refused before the body is read
            if app.name == "kbs":
                declared = KBS_LIMIT + 1
            elif cap is None:
                continue
            else:
                declared = cap + 1
            r = app.request(method, path, headers=app.auth, content=b"x" * declared)
            edge = app.framework_table(path) if app.name == "kbs" else table
            body = _check_shape(r, edge, TOO_LARGE_STATUS[app.name])
            assert "too large" in body["detail"] or "larger than" in body["detail"], body
            if cap is None:
                continue
            # a chunked body one byte over the route's own cap is cut by the reader
            r = app.request(method, path, headers=app.auth, content=_chunks(cap + 1))
            body = _check_shape(r, table, TOO_LARGE_STATUS[app.name])
            assert "too large" in body["detail"] or "larger than" in body["detail"], body
    assert walked >= 20


def test_the_shapes_are_the_documented_ones() -> None:
    assert RCAR_ERRORS.shape.prefix == ERROR_TYPE_PREFIX
    assert ADMIN_ERRORS.shape.prefix == MODELSEAL_PREFIX
    assert REGISTRY_ERRORS.shape.prefix == MODELSEAL_PREFIX
    for table in (RCAR_ERRORS, ADMIN_ERRORS, REGISTRY_ERRORS):
        assert dict(table.shape.headers) == DOCUMENTED_HEADERS[table.name]
    r = RCAR_ERRORS.render(RCAR_ERRORS.lookup(BackendError("db down")))
    assert r.status_code == 503
    assert r.headers["Retry-After"] == "5"
    r = ADMIN_ERRORS.render(ADMIN_ERRORS.lookup(TokenError("expired")))
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"] == 'Bearer realm="modelseal-kbs-admin"'
    r = REGISTRY_ERRORS.render(REGISTRY_ERRORS.lookup(TokenError("wrong token")))
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"] == "Bearer"
