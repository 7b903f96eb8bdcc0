"""The HTTP edge's mechanics: table lookup by class, problem rendering, the capped reader."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterable

import pytest
from starlette.requests import Request

from modelseal._internal.http_edge import (
    BodyTooLarge,
    ErrorTable,
    Problem,
    ProblemShape,
    read_body,
)
from modelseal.errors import (
    AttestationError,
    ConfigError,
    Error,
    FormatError,
    IntegrityError,
    UnsupportedTee,
)

FRAMEWORK = {
    400: Problem(400, "bad", "bad request"),
    404: Problem(404, "nowhere", "no such endpoint"),
    405: Problem(405, "method", "method not allowed"),
    500: Problem(500, "bug", "internal error"),
}


def _table(**kwargs: object) -> ErrorTable:
    rows = {
        FormatError: Problem(400, "format"),
        AttestationError: Problem(401, "attestation", "attestation failed"),
        UnsupportedTee: Problem(401, "tee", "TEE kind not accepted"),
    }
    return ErrorTable(
        "t",
        ProblemShape("urn:t:", {"Cache-Control": "no-store"}, {503: {"Retry-After": "5"}}),
        rows,
        default=Problem(500, "internal", "internal error"),
        framework=FRAMEWORK,
        too_large=Problem(413, "too-large", "request body too large"),
        logger=logging.getLogger("test.http_edge"),
        **kwargs,  # type: ignore[arg-type]
    )


def test_the_most_specific_class_wins_whatever_the_row_order() -> None:
    table = _table()
    assert table.lookup(UnsupportedTee("x")).kind == "tee"
    assert table.lookup(AttestationError("x")).kind == "attestation"
    assert table.lookup(IntegrityError("x")).kind == "format"  # a FormatError subclass
    assert table.lookup(ConfigError("x")).kind == "internal"
    assert table.lookup(KeyError("x")).kind == "internal"


def test_fixed_details_hide_the_message_and_echoed_ones_are_capped() -> None:
    table = _table(max_detail=10)
    r = table.respond(AttestationError("quote signature invalid"), where="t")
    assert json.loads(r.body) == {"type": "urn:t:attestation", "detail": "attestation failed"}
    r = table.respond(FormatError("x" * 50), where="t")
    assert json.loads(r.body)["detail"] == "x" * 10
    assert r.headers["cache-control"] == "no-store"
    r = table.respond(Error(""), where="t")
    assert json.loads(r.body)["detail"] == "internal error"


def test_status_headers_and_framework_answers() -> None:
    table = _table()
    r = table.shape.response(503, "down", "retry later")
    assert r.headers["retry-after"] == "5"
    r = table.framework(405, {"Allow": "GET", "X-Leak": "no"})
    assert (r.status_code, r.headers["allow"]) == (405, "GET")
    assert "x-leak" not in r.headers
    assert table.framework(418).status_code == 400
    assert table.framework(502).status_code == 500


def test_a_table_must_name_every_framework_problem() -> None:
    with pytest.raises(ValueError, match=r"\[405\]"):
        ErrorTable(
            "broken",
            ProblemShape("urn:b:"),
            {},
            default=FRAMEWORK[500],
            framework={s: p for s, p in FRAMEWORK.items() if s != 405},
            too_large=FRAMEWORK[400],
            logger=logging.getLogger("test.http_edge"),
        )


def _request(chunks: Iterable[bytes], headers: dict[str, str] | None = None) -> Request:
    pending = list(chunks)

    async def receive() -> dict[str, object]:
        body = pending.pop(0) if pending else b""
        return {"type": "http.request", "body": body, "more_body": bool(pending)}

    raw = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    return Request({"type": "http", "method": "POST", "headers": raw}, receive)


def test_read_body_takes_exactly_the_limit_and_cuts_one_byte_more() -> None:
    assert asyncio.run(read_body(_request([b"a" * 5, b"b" * 5]), 10)) == b"a" * 5 + b"b" * 5
    with pytest.raises(BodyTooLarge, match="larger than 10 bytes"):
        asyncio.run(read_body(_request([b"a" * 5, b"b" * 6]), 10))


def test_read_body_refuses_a_declared_length_before_reading() -> None:
    with pytest.raises(BodyTooLarge):
        asyncio.run(read_body(_request([], {"Content-Length": "11"}), 10))
    with pytest.raises(BodyTooLarge):
        asyncio.run(read_body(_request([], {"Content-Length": "-1"}), 10))


def test_a_client_that_hangs_up_is_a_format_error() -> None:
    async def receive() -> dict[str, object]:
        return {"type": "http.disconnect"}

    request = Request({"type": "http", "method": "POST", "headers": []}, receive)
    with pytest.raises(FormatError, match="interrupted"):
        asyncio.run(read_body(request, 10))
