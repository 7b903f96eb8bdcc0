"""HotRoutes: the routes it is given are served as the router would serve them (path
parameters, what the request observer reads from the scope); everything else, a wrong
method on those paths included, reaches the app's router unchanged."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import REGISTRY
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from modelseal._internal.http_edge import HotRoutes, RequestObserver

pytestmark = pytest.mark.anyio
SERVER = "hot-routes-test"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class _Seen:
    """Counts the requests that reached the app's own middleware stack and router."""

    def __init__(self, app: ASGIApp, paths: list[str]) -> None:
        self.app = app
        self.paths = paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.paths.append(f"{scope['method']} {scope['path']}")
        await self.app(scope, receive, send)


def _app() -> tuple[FastAPI, list[str]]:
    app = FastAPI()

    async def echo(request: Request) -> Response:
        body = await request.body()
        return Response(body, status_code=201, headers={"x-echo": "1"})

    async def item(request: Request) -> Response:
        return Response(str(request.path_params["path"]).encode(), status_code=200)

    routes = [
        Route("/hot/echo", echo, methods=["POST"]),
        Route("/hot/items/{path:path}", item, methods=["GET"]),
    ]
    app.router.routes.extend(routes)

    @app.get("/cold")
    async def cold() -> Response:
        return Response(b"cold")

    seen: list[str] = []
    app.add_middleware(_Seen, paths=seen)  # innermost: sees only what HotRoutes passes on
    app.add_middleware(HotRoutes, routes=routes, router=app.router)
    app.add_middleware(RequestObserver, server=SERVER)
    return app, seen


@pytest.fixture
async def client() -> AsyncIterator[tuple[httpx.AsyncClient, list[str]]]:
    app, seen = _app()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c, seen


def _count(route: str, method: str, status_class: str) -> float:
    labels = {"server": SERVER, "route": route, "method": method, "status_class": status_class}
    return REGISTRY.get_sample_value("modelseal_http_request_duration_seconds_count", labels) or 0.0


async def test_hot_routes_are_served_without_the_router(
    client: tuple[httpx.AsyncClient, list[str]],
) -> None:
    c, seen = client
    before = _count("/hot/items/{path:path}", "GET", "2xx")
    r = await c.post("/hot/echo", content=b"payload")
    assert (r.status_code, r.content, r.headers["x-echo"]) == (201, b"payload", "1")
    r = await c.get("/hot/items/a/b/c")
    assert (r.status_code, r.content) == (200, b"a/b/c")
    assert seen == []
    # the observer names the matched template, as for a request the router served
    assert _count("/hot/items/{path:path}", "GET", "2xx") == before + 1


async def test_other_methods_and_paths_reach_the_router(
    client: tuple[httpx.AsyncClient, list[str]],
) -> None:
    c, seen = client
    r = await c.get("/hot/echo")
    assert r.status_code == 405
    assert r.headers["allow"] == "POST"
    assert (await c.delete("/hot/items/x")).status_code == 405
    assert (await c.get("/cold")).content == b"cold"
    assert (await c.get("/nowhere")).status_code == 404
    assert seen == ["GET /hot/echo", "DELETE /hot/items/x", "GET /cold", "GET /nowhere"]
