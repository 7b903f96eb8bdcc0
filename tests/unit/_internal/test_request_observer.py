"""The HTTP edge's request observer: request ids, the latency histogram's bounded labels, the
access line; and the log formats that carry the request id."""

from __future__ import annotations

import json
import logging
import re
import sys
import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from prometheus_client import REGISTRY
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from modelseal._internal.http_edge import UNMATCHED, RequestObserver
from modelseal._internal.logs import (
    REQUEST_ID,
    JsonFormatter,
    RequestIdFilter,
    configure_logging,
    request_id_from,
)

pytestmark = pytest.mark.anyio
SERVER = "unit-test"
log = logging.getLogger("modelseal.test.observer")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _app() -> FastAPI:
    app = FastAPI()
    router = APIRouter()

    @router.get("/items/{item_id}")
    async def item(item_id: str) -> Response:
        def work() -> None:
            log.info("working on an item")

        await run_in_threadpool(work)
        return Response(b"{}", media_type="application/json")

    @router.get("/boom")
    async def boom() -> Response:
        raise RuntimeError("a bug")

    async def plain(request: Request) -> Response:
        return Response(b"plain", status_code=202)

    included = APIRouter()

    @included.get("/items/{item_id}")
    async def included_item(item_id: str) -> Response:
        return Response(b"{}", media_type="application/json", status_code=203)

    app.router.routes.append(Route("/plain/{rest:path}", plain, methods=["POST"]))
    app.include_router(router)
    app.include_router(included, prefix="/api/v1")
    app.add_middleware(RequestObserver, server=SERVER, prefixes=("/api/v1",))
    return app


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=_app(), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
        yield c


@pytest.fixture
def captured(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """caplog whose records carry the request id, as the installed handler stamps them."""
    caplog.handler.addFilter(RequestIdFilter())
    caplog.set_level(logging.INFO, logger="modelseal")
    return caplog


def _count(route: str, method: str, status_class: str) -> float:
    value = REGISTRY.get_sample_value(
        "modelseal_http_request_duration_seconds_count",
        {"server": SERVER, "route": route, "method": method, "status_class": status_class},
    )
    return value or 0.0


async def test_well_formed_request_id_is_kept_and_returned(
    client: httpx.AsyncClient, captured: pytest.LogCaptureFixture
) -> None:
    rid = "req-" + "a" * 60 + ":7/x=1"
    r = await client.get("/items/42", headers={"X-Request-Id": rid})
    assert r.status_code == 200
    assert r.headers["x-request-id"] == rid
    # the line logged in the thread pool and the access line both carry it
    work = [rec for rec in captured.records if rec.getMessage() == "working on an item"]
    assert [getattr(rec, "request_id", None) for rec in work] == [rid]
    access = [rec for rec in captured.records if rec.name == "modelseal.http"]
    assert access[-1].request_id == rid  # type: ignore[attr-defined]
    assert access[-1].http_route == "/items/{item_id}"  # type: ignore[attr-defined]
    assert REQUEST_ID.get() is None  # reset after the request


@pytest.mark.parametrize(
    "header",
    [
        b"x" * 129,  # too long
        b"has space",
        b"new\nline",
        b"\xc3\xa9t\xc3\xa9",  # not ASCII
        b"",
        b"semi;colon",
    ],
)
async def test_malformed_request_id_is_replaced(client: httpx.AsyncClient, header: bytes) -> None:
    r = await client.get("/items/1", headers=[(b"X-Request-Id", header)])
    returned = r.headers["x-request-id"]
    assert returned.encode() != header
    assert re.fullmatch(r"[0-9a-f]{32}", returned)


async def test_fresh_ids_differ(client: httpx.AsyncClient) -> None:
    ids = {(await client.get("/items/1")).headers["x-request-id"] for _ in range(3)}
    assert len(ids) == 3


def test_request_id_bounds() -> None:
    assert request_id_from(b"A" * 128) == "A" * 128
    assert request_id_from(b"A" * 129) != "A" * 129
    assert request_id_from(None) != request_id_from(None)
    assert re.fullmatch(r"[0-9a-f]{32}", request_id_from(b"bad id"))


async def test_latency_labels_are_route_templates(client: httpx.AsyncClient) -> None:
    before = {
        "item": _count("/items/{item_id}", "GET", "2xx"),
        "plain": _count("/plain/{rest:path}", "POST", "2xx"),
        "missing": _count(UNMATCHED, "GET", "4xx"),
        "odd": _count(UNMATCHED, "OTHER", "4xx"),
        "bug": _count("/boom", "GET", "5xx"),
        "wrong_method": _count("/plain/{rest:path}", "GET", "4xx"),
    }
    before["included"] = _count("/api/v1/items/{item_id}", "GET", "2xx")
    for i in range(3):
        assert (await client.get(f"/items/{uuid.uuid4()}-{i}")).status_code == 200
    # a route of a router included under a prefix is labelled with its whole template
    assert (await client.get("/api/v1/items/7")).status_code == 203
    assert (await client.post("/plain/a/b/c")).status_code == 202
    assert (await client.get("/no/such/path")).status_code == 404
    assert (await client.request("BREW", "/coffee")).status_code == 404
    assert (await client.get("/boom")).status_code == 500
    assert (await client.get("/plain/x")).status_code == 405
    assert _count("/items/{item_id}", "GET", "2xx") == before["item"] + 3
    assert _count("/plain/{rest:path}", "POST", "2xx") == before["plain"] + 1
    assert _count("/api/v1/items/{item_id}", "GET", "2xx") == before["included"] + 1
    assert _count(UNMATCHED, "GET", "4xx") == before["missing"] + 1
    # a client-chosen method never becomes a label value
    assert _count(UNMATCHED, "OTHER", "4xx") == before["odd"] + 1
    assert _count("/boom", "GET", "5xx") == before["bug"] + 1
    assert _count("/plain/{rest:path}", "GET", "4xx") == before["wrong_method"] + 1
    # no series for the requested paths themselves
    names = {
        s.labels.get("route")
        for m in REGISTRY.collect()
        if m.name == "modelseal_http_request_duration_seconds"
        for s in m.samples
        if s.labels.get("server") == SERVER
    }
    assert names <= {
        "/items/{item_id}",
        "/api/v1/items/{item_id}",
        "/plain/{rest:path}",
        "/boom",
        UNMATCHED,
    }


async def test_access_line_escapes_the_path(
    client: httpx.AsyncClient, captured: pytest.LogCaptureFixture
) -> None:
    await client.get("/items/a%0Aforged%20INFO%20line")
    line = [rec for rec in captured.records if rec.name == "modelseal.http"][-1].getMessage()
    assert "\n" not in line
    assert "a\\nforged INFO line" in line


def _record(**extra: object) -> logging.LogRecord:
    record = logging.LogRecord("modelseal.kbs", logging.INFO, __file__, 1, "hello %s", ("x",), None)
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def test_json_lines_have_fixed_fields_only() -> None:
    token = REQUEST_ID.set("rid-1")
    try:
        record = _record(secret_extra="not for the log", http_status=200)
        RequestIdFilter().filter(record)
    finally:
        REQUEST_ID.reset(token)
    doc = json.loads(JsonFormatter().format(record))
    assert doc["message"] == "hello x"
    assert doc["request_id"] == "rid-1"
    assert doc["http_status"] == 200
    assert doc["level"] == "INFO"
    assert doc["logger"] == "modelseal.kbs"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", doc["ts"])
    assert "secret_extra" not in doc
    assert set(doc) <= {"ts", "level", "logger", "message", "request_id", "pid", "http_status"}


def test_json_lines_carry_tracebacks() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord(
            "modelseal", logging.ERROR, __file__, 1, "failed", (), sys.exc_info()
        )
    doc = json.loads(JsonFormatter().format(record))
    assert "ValueError: boom" in doc["exc_info"]
    assert "request_id" not in doc  # outside a request


@pytest.fixture
def restored_root() -> Iterator[None]:
    """The root logger's handlers and level as they were before the test configured it."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in saved[0]:
        root.addHandler(handler)
    root.setLevel(saved[1])


@pytest.mark.usefixtures("restored_root")
def test_configure_logging_text_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("json", logging.INFO)
    token = REQUEST_ID.set("rid-2")
    logging.getLogger("modelseal.test").info("one")
    REQUEST_ID.reset(token)
    configure_logging("text", logging.INFO)
    logging.getLogger("modelseal.test").info("two")
    logging.getLogger("uvicorn.error").info("three")
    lines = capsys.readouterr().err.splitlines()
    first = json.loads(lines[0])
    assert (first["message"], first["request_id"]) == ("one", "rid-2")
    assert lines[1].endswith("INFO modelseal.test: two")
    assert lines[2].endswith("INFO uvicorn.error: three")
    with pytest.raises(ValueError, match="log format"):
        configure_logging("xml")


@pytest.mark.usefixtures("restored_root")
def test_the_handler_follows_stderr(monkeypatch: pytest.MonkeyPatch) -> None:
    """The handler writes to the current ``sys.stderr``: a stream swapped out (and closed)
    after configuration is never written to."""
    import io

    first, second = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    configure_logging("text", logging.INFO)
    first.close()
    monkeypatch.setattr(sys, "stderr", second)
    logging.getLogger("modelseal.test").info("after the swap")
    assert "after the swap" in second.getvalue()
