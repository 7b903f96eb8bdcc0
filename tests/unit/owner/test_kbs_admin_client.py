"""KbsAdminClient against a scripted KBS (httpx.MockTransport): status mapping, bad answers."""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import httpx
import pytest

from modelseal._internal.encoding import b64url_encode
from modelseal.crypto.secret import SecretBytes
from modelseal.errors import (
    AuthorizationError,
    BackendError,
    ConfigError,
    KeyNotFound,
    TokenError,
    TransientError,
)
from modelseal.owner.kbs_admin import KbsAdminClient, KeyConflictError

Handler = Callable[[httpx.Request], httpx.Response]


def _client(handler: Handler) -> KbsAdminClient:
    return KbsAdminClient("http://kbs.test", "tok", transport=httpx.MockTransport(handler))


def _problem(status: int, detail: str = "why") -> Handler:
    return lambda request: httpx.Response(status, json={"type": "t", "detail": detail})


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, ConfigError),
        (401, TokenError),
        (403, AuthorizationError),
        (404, KeyNotFound),
        (409, KeyConflictError),
        (422, ConfigError),
        (500, BackendError),
        (502, TransientError),
        (503, TransientError),
    ],
)
def test_status_codes_map_to_typed_errors(status: int, error: type[Exception]) -> None:
    dek = os.urandom(32)
    with _client(_problem(status)) as client, pytest.raises(error) as raised:
        client.put_key("models/m/v1", SecretBytes(dek))
    assert "why" in str(raised.value)
    assert b64url_encode(dek) not in str(raised.value)
    assert dek.hex() not in str(raised.value)


def test_unreachable_kbs_is_transient() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with _client(refuse) as client, pytest.raises(TransientError, match="unreachable"):
        client.list_keys()


@pytest.mark.parametrize("body", [b"", b"not json", b"[]", b'{"keys": [{"key_id": 1}]}'])
def test_malformed_answers_are_backend_errors(body: bytes) -> None:
    with _client(lambda request: httpx.Response(200, content=body)) as client:
        with pytest.raises(BackendError):
            client.list_keys()
        with pytest.raises(BackendError):
            client.whoami() if body in (b"", b"not json") else client.rotate_kek()


def test_audit_paging_that_does_not_advance_is_refused() -> None:
    entry = {
        "seq": 5,
        "time": "2026-11-22T00:00:00.000000Z",
        "actor": "a",
        "action": "key.release",
        "key_id": None,
        "tee": None,
        "claims_digest": None,
        "policy_digest": None,
        "decision": "deny",
        "reasons": [],
        "prev_hash": "0" * 64,
        "row_hash": "1" * 64,
    }
    page = json.dumps({"entries": [entry], "next_after": 5}).encode()
    with _client(lambda request: httpx.Response(200, content=page)) as client:
        rows = client.iter_audit(after=5)
        assert next(rows).seq == 5
        with pytest.raises(BackendError, match="did not advance"):
            next(rows)


@pytest.mark.parametrize("token", ["", "   ", "a b"])
def test_token_is_required(token: str) -> None:
    with pytest.raises(ConfigError):
        KbsAdminClient("http://kbs.test", token)


def test_url_scheme_is_required() -> None:
    with pytest.raises(ConfigError, match="http"):
        KbsAdminClient("kbs.test", "tok")


def test_bad_key_id_never_reaches_the_wire() -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        raise AssertionError("no request expected")

    with _client(fail) as client, pytest.raises(ConfigError, match="invalid key id"):
        client.get_key("../etc/passwd")
