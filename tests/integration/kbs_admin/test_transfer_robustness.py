"""ITA/CNAP transfer endpoint under malformed input: typed 4xx, never 500.

One KBS app per module (mock-tdx root configured); requests through httpx.ASGITransport.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelseal._internal.encoding import b64_encode
from modelseal.crypto.secret import SecretBytes
from modelseal.kbs.app import create_app
from modelseal.kbs.settings import KbsSettings
from modelseal.kbs.state import KbsState
from modelseal.kbs.transfer_api import MAX_TRANSFER_BODY
from modelseal.tee.mock_tdx.ca import MockTdxCA
from tests.integration.kbs_admin.strategies import bodies, json_values

KEY_ID = "models/fuzz/v1"
URL = f"/kbs/v1/keys/{KEY_ID}/transfer"
HEADERS = {"Attestation-Type": "TDX", "Accept": "application/json"}
POLICY = {"apiVersion": "modelseal/v1", "kind": "ReleasePolicy", "tee": ["mock-tdx"]}


class Kbs:
    def __init__(self, base: Path) -> None:
        MockTdxCA.create(base / "ca")
        self.state = KbsState.open(base / "kbs")
        self.state.keys.put(KEY_ID, SecretBytes(b"k" * 32), policy=POLICY, actor="test")
        config = KbsSettings(
            data_dir=base / "kbs", tee_options={"mock_tdx_root": str(base / "ca" / "root-ca.pem")}
        )
        self.app: FastAPI = create_app(config.validated(), self.state)

    def post(self, body: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
        async def go() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
                return await c.post(URL, content=body, headers=headers or HEADERS)

        return asyncio.run(go())

    def nonce(self) -> dict[str, str]:
        r = self.post(b"")
        assert r.status_code == 200, r.text
        value: dict[str, str] = r.json()
        return value


@pytest.fixture(scope="module")
def kbs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kbs]:
    k = Kbs(tmp_path_factory.mktemp("transfer-robustness"))
    yield k
    k.state.close()


def _round2(kbs: Kbs, **over: Any) -> bytes:
    body: dict[str, Any] = {
        "quote": b64_encode(b"q" * 64),
        "nonce": kbs.nonce(),
        "user_data": b64_encode(b"u" * 400),
    }
    body.update(over)
    return json.dumps({k: v for k, v in body.items() if v is not None}).encode()


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"\xff\xfe",
        b"[]",
        b'"quote"',
        b"null",
        b'{"hello": 1}',
        b'{"quote": 1, "user_data": "AA=="}',
        b'{"quote": "AA==", "user_data": ["x"]}',
        b'{"quote": "AA==", "user_data": "AA==", "nonce": "abc"}',
        b'{"quote": "AA==", "user_data": "AA==", "nonce": {"val": 1, "iat": "", "signature": ""}}',
        b'{"quote": "AA==", "user_data": "AA==", "extra": true}',
        b'{"quote": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    ],
)
def test_malformed_bodies_are_400(kbs: Kbs, body: bytes) -> None:
    r = kbs.post(body)
    assert r.status_code == 400, r.text
    assert r.json()["type"].endswith("SerdeError")


def test_bad_base64_and_small_keys_are_400(kbs: Kbs) -> None:
    for over in (
        {"quote": "not base64!"},
        {"user_data": "***"},
        {"event_log": "%%%"},
        {"init_data": "@@"},
        {"user_data": b64_encode(b"\x30\x03\x02\x01\x01")},
        {"user_data": b64_encode((65537).to_bytes(4, "little") + b"\xff" * 256)},
    ):
        r = kbs.post(_round2(kbs, **over))
        assert r.status_code == 400, (over, r.text)


def test_body_size_limit(kbs: Kbs) -> None:
    r = kbs.post(b'{"quote": "' + b"A" * MAX_TRANSFER_BODY + b'"}')
    assert r.status_code == 400
    assert "too large" in r.json()["detail"]


def test_unknown_attestation_type_is_refused(kbs: Kbs) -> None:
    for kind in ("SGX", "x" * 300, "sample"):
        r = kbs.post(_round2(kbs), headers={**HEADERS, "Attestation-Type": kind})
        assert r.status_code in (400, 401), r.text
        assert r.status_code != 500


def test_malformed_key_ids_are_400_and_issue_no_nonce(kbs: Kbs) -> None:
    async def go(url: str) -> httpx.Response:
        transport = httpx.ASGITransport(app=kbs.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
            return await c.post(url)

    for url in ("/kbs/v1/keys/..%2F../x/y/transfer", "/kbs/v1/keys/a%00/b/c/transfer"):
        r = asyncio.run(go(url))
        assert r.status_code in (400, 404), r.text


fields = st.fixed_dictionaries(
    {},
    optional={
        "quote": st.just(b64_encode(b"q" * 64)) | json_values,
        "user_data": st.just(b64_encode(b"u" * 400)) | json_values,
        "nonce": json_values,
        "event_log": json_values,
        "init_data": json_values,
    },
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(bodies(fields))
def test_any_body_is_answered_without_a_server_error(kbs: Kbs, body: bytes) -> None:
    r = kbs.post(body)
    assert r.status_code in (200, 400, 401, 403), r.text
    assert set(r.json()) >= ({"type", "detail"} if r.status_code >= 400 else {"val"})
