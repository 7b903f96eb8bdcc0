"""ITA/CNAP key transfer through the full KBS app (httpx.ASGITransport) with mock-tdx quotes."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelseal._internal.clock import FixedClock
from modelseal._internal.encoding import b64_decode, b64_encode
from modelseal.crypto.cnap_wrap import WorkloadKeyPair
from modelseal.crypto.secret import SecretBytes
from modelseal.format import cnap
from modelseal.kbs.app import create_app
from modelseal.kbs.settings import KbsSettings
from modelseal.kbs.state import KbsState
from modelseal.tee.mock_tdx.attester import Attester
from modelseal.tee.mock_tdx.ca import MockTdxCA

pytestmark = pytest.mark.anyio

KEY_ID = "models/cnap/v1"
DENIED = "models/cnap/denied"
DEK = os.urandom(32)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("mock-tdx-ca")
    MockTdxCA.create(path)
    return path


@pytest.fixture(scope="module")
def workload() -> WorkloadKeyPair:
    return WorkloadKeyPair(3072)


@pytest.fixture(scope="module")
def attacker() -> WorkloadKeyPair:
    """A second workload key (RSA-3072 generation is slow: once per module)."""
    return WorkloadKeyPair(3072)


@dataclass
class Env:
    client: httpx.AsyncClient
    state: KbsState
    attester: Attester
    clock: FixedClock


async def _make(tmp_path: Path, ca_dir: Path, **settings: Any) -> AsyncIterator[Env]:
    clock = FixedClock(time.time())
    attester = Attester(ca_dir)
    state = KbsState.open(tmp_path / "kbs", clock=clock)
    policy = {
        "apiVersion": "modelseal/v1",
        "kind": "ReleasePolicy",
        "tee": ["mock-tdx"],
        "measurements": [{"mr_td": attester.measurements["mr_td"]}],
    }
    state.keys.put(KEY_ID, SecretBytes(DEK), policy=policy, actor="test")
    state.keys.put(DENIED, SecretBytes(DEK), policy={**policy, "tee": ["tdx"]}, actor="test")
    config = KbsSettings(
        data_dir=tmp_path / "kbs",
        tee_options={"mock_tdx_root": str(ca_dir / "root-ca.pem")},
        **settings,
    )
    app = create_app(config.validated(), state, clock=clock)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        yield Env(client, state, attester, clock)
    state.close()


@pytest.fixture
async def env(tmp_path: Path, ca_dir: Path) -> AsyncIterator[Env]:
    async for e in _make(tmp_path, ca_dir):
        yield e


@pytest.fixture
async def oneshot_env(tmp_path: Path, ca_dir: Path) -> AsyncIterator[Env]:
    async for e in _make(tmp_path, ca_dir, allow_cnap_oneshot=True):
        yield e


def _url(key_id: str) -> str:
    return f"/kbs/v1/keys/{key_id}/transfer"


HEADERS = {"Attestation-Type": "TDX", "Accept": "application/json"}


async def _nonce(env: Env, key_id: str = KEY_ID) -> dict[str, str]:
    r = await env.client.post(_url(key_id), headers={"Accept": "application/json"})
    assert r.status_code == 200, r.text
    assert r.headers["attestation-type"] == "TDX"
    nonce: dict[str, str] = r.json()
    assert set(nonce) == {"val", "iat", "signature"}
    assert len(b64_decode(nonce["val"])) == 32
    return nonce


def _round2(env: Env, nonce: dict[str, str], user_data: bytes, **over: Any) -> dict[str, Any]:
    raw = b64_decode(nonce["val"]) + b64_decode(nonce["iat"])
    report_data = hashlib.sha512(raw + user_data).digest()
    evidence = env.attester.evidence(report_data)
    body = {
        "quote": evidence["quote"],
        "nonce": nonce,
        "user_data": b64_encode(user_data),
        "event_log": evidence["cc_eventlog"],
    }
    body.update(over)
    return body


def _unwrap(workload: WorkloadKeyPair, response: httpx.Response) -> bytes:
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"wrapped_key", "wrapped_swk"}
    swk = workload.unwrap(b64_decode(body["wrapped_swk"]))
    wrapped = b64_decode(body["wrapped_key"])
    assert int.from_bytes(wrapped[:4], "little") == 12
    assert int.from_bytes(wrapped[4:8], "little") == 16
    return cnap.decode(swk, wrapped)


@pytest.mark.parametrize("encoding", ["spki", "ita"])
async def test_two_round_transfer(env: Env, workload: WorkloadKeyPair, encoding: str) -> None:
    user_data = workload.public.spki_der() if encoding == "spki" else workload.public.ita_bytes()
    nonce = await _nonce(env)
    r = await env.client.post(_url(KEY_ID), json=_round2(env, nonce, user_data), headers=HEADERS)
    assert _unwrap(workload, r) == DEK
    rows = [e for e in env.state.audit.entries() if e.action == "key.transfer"]
    assert [(e.key_id, e.tee, e.decision) for e in rows] == [(KEY_ID, "mock-tdx", "allow")]
    assert env.state.audit.verify().ok


async def test_url_encoded_key_id(env: Env, workload: WorkloadKeyPair) -> None:
    url = "/kbs/v1/keys/models%2Fcnap%2Fv1/transfer"
    r = await env.client.post(url)
    assert r.status_code == 200
    user_data = workload.public.spki_der()
    r = await env.client.post(url, json=_round2(env, r.json(), user_data), headers=HEADERS)
    assert _unwrap(workload, r) == DEK


async def test_nonce_is_single_use(env: Env, workload: WorkloadKeyPair) -> None:
    user_data = workload.public.spki_der()
    body = _round2(env, await _nonce(env), user_data)
    r = await env.client.post(_url(KEY_ID), json=body, headers=HEADERS)
    assert r.status_code == 200
    r = await env.client.post(_url(KEY_ID), json=body, headers=HEADERS)
    assert r.status_code == 401


async def test_nonce_expires_and_is_bound_to_the_key(env: Env, workload: WorkloadKeyPair) -> None:
    user_data = workload.public.spki_der()
    body = _round2(env, await _nonce(env, DENIED), user_data)
    r = await env.client.post(_url(KEY_ID), json=body, headers=HEADERS)
    assert r.status_code == 401
    body = _round2(env, await _nonce(env), user_data)
    env.clock.advance(301)
    r = await env.client.post(_url(KEY_ID), json=body, headers=HEADERS)
    assert r.status_code == 401


async def test_forged_nonce_signature(env: Env, workload: WorkloadKeyPair) -> None:
    nonce = await _nonce(env)
    nonce["iat"] = b64_encode(b"2099-01-01T00:00:00Z")
    body = _round2(env, nonce, workload.public.spki_der())
    r = await env.client.post(_url(KEY_ID), json=body, headers=HEADERS)
    assert r.status_code == 401


async def test_nonce_issued_before_a_kek_rotation_still_verifies(
    env: Env, workload: WorkloadKeyPair
) -> None:
    """The nonce signature does not depend on the KEK: rotating between the rounds (or a
    worker that has not yet seen another's rotation) must not turn a valid nonce into 401."""
    nonce = await _nonce(env)
    env.state.keys.rotate_kek(actor="test")
    body = _round2(env, nonce, workload.public.spki_der())
    r = await env.client.post(_url(KEY_ID), json=body, headers=HEADERS)
    assert _unwrap(workload, r) == DEK
    other = KbsState.open(env.state.data_dir)  # a second worker on the same data dir
    try:
        val, iat = b64_decode(nonce["val"]), b64_decode(nonce["iat"])
        assert other.transfer_nonce_mac(val, iat) == env.state.transfer_nonce_mac(val, iat)
        assert other.transfer_nonce_mac(val, iat + b"x") != env.state.transfer_nonce_mac(val, iat)
    finally:
        other.close()


async def test_report_data_must_bind_user_data(
    env: Env, workload: WorkloadKeyPair, attacker: WorkloadKeyPair
) -> None:
    nonce = await _nonce(env)
    body = _round2(env, nonce, workload.public.spki_der())
    body["user_data"] = b64_encode(attacker.public.spki_der())
    r = await env.client.post(_url(KEY_ID), json=body, headers=HEADERS)
    assert r.status_code == 401
    assert r.json()["detail"] == "attestation failed"


async def test_small_rsa_key_refused(env: Env) -> None:
    modulus = (int.from_bytes(os.urandom(256), "big") | (1 << 2047) | 1).to_bytes(256, "big")
    ita_2048 = (65537).to_bytes(4, "little") + modulus
    r = await env.client.post(
        _url(KEY_ID), json=_round2(env, await _nonce(env), ita_2048), headers=HEADERS
    )
    assert r.status_code == 400
    assert "3072" in r.json()["detail"]


async def test_policy_deny_and_unknown_key_are_identical(
    env: Env, workload: WorkloadKeyPair
) -> None:
    user_data = workload.public.spki_der()
    bodies = []
    for key_id in (DENIED, "models/cnap/missing"):
        body = _round2(env, await _nonce(env, key_id), user_data)
        r = await env.client.post(_url(key_id), json=body, headers=HEADERS)
        assert r.status_code == 403
        bodies.append(r.content)
    assert bodies[0] == bodies[1]
    rows = [e for e in env.state.audit.entries() if e.action == "key.transfer"]
    assert [e.decision for e in rows] == ["deny", "deny"]


async def test_malformed_requests(env: Env, workload: WorkloadKeyPair) -> None:
    user_data = workload.public.spki_der()
    nonce = await _nonce(env)
    cases: list[Any] = [
        {"quote": "!!", "nonce": nonce, "user_data": b64_encode(user_data)},
        {**_round2(env, nonce, user_data), "extra": 1},
        {"quote": "AAAA"},
        [1, 2],
        {"nonce": nonce},
    ]
    for body in cases:
        r = await env.client.post(_url(KEY_ID), json=body, headers=HEADERS)
        assert r.status_code == 400, (body, r.text)
    r = await env.client.post(_url(KEY_ID), content=b"{nope", headers=HEADERS)
    assert r.status_code == 400
    r = await env.client.post("/kbs/v1/keys/..x/y/z/transfer")
    assert r.status_code == 400
    r = await env.client.post(
        _url(KEY_ID),
        json=_round2(env, await _nonce(env), user_data),
        headers={"Attestation-Type": "SGX"},
    )
    assert r.status_code == 401


async def test_oneshot_refused_by_default(env: Env, workload: WorkloadKeyPair) -> None:
    user_data = workload.public.spki_der()
    quote = env.attester.evidence(hashlib.sha512(user_data).digest())["quote"]
    body = {"quote": quote, "user_data": b64_encode(user_data)}
    r = await env.client.post(_url(KEY_ID), json=body, headers=HEADERS)
    assert r.status_code == 401


async def test_oneshot_when_enabled(oneshot_env: Env, workload: WorkloadKeyPair) -> None:
    env = oneshot_env
    user_data = workload.public.spki_der()
    evidence = env.attester.evidence(hashlib.sha512(user_data).digest())
    body = {"quote": evidence["quote"], "user_data": b64_encode(user_data)}
    r = await env.client.post(_url(KEY_ID), json=body, headers=HEADERS)
    assert _unwrap(workload, r) == DEK


async def test_no_key_bytes_in_logs(
    env: Env, workload: WorkloadKeyPair, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    user_data = workload.public.spki_der()
    body = _round2(env, await _nonce(env), user_data)
    r = await env.client.post(_url(KEY_ID), json=body, headers=HEADERS)
    assert _unwrap(workload, r) == DEK
    await env.client.post(_url(DENIED), json=body, headers=HEADERS)
    text = caplog.text + "".join(str(rec.args) for rec in caplog.records)
    assert "transfer" in text
    assert DEK.hex() not in text
    assert b64_encode(DEK) not in text


async def test_init_data_binds_the_model_digest(env: Env, workload: WorkloadKeyPair) -> None:
    digest = "sha256:" + "5e" * 32
    doc = f'version = "0.1.0"\nalgorithm = "sha384"\n[data]\nmodel_digest = "{digest}"\n'
    attester = Attester(env.attester.ca.directory, init_data=doc)
    policy = {
        "apiVersion": "modelseal/v1",
        "kind": "ReleasePolicy",
        "tee": ["mock-tdx"],
        "model_digest": digest,
    }
    env.state.keys.set_policy(KEY_ID, policy, actor="test")
    user_data = workload.public.spki_der()
    for sent, status in ((doc, 200), (None, 403)):
        nonce = await _nonce(env)
        raw = b64_decode(nonce["val"]) + b64_decode(nonce["iat"])
        evidence = attester.evidence(hashlib.sha512(raw + user_data).digest())
        body = {
            "quote": evidence["quote"],
            "nonce": nonce,
            "user_data": b64_encode(user_data),
            "event_log": evidence["cc_eventlog"],
        }
        if sent is not None:
            body["init_data"] = b64_encode(sent.encode())
        r = await env.client.post(_url(KEY_ID), json=body, headers=HEADERS)
        assert r.status_code == status, r.text
        if status == 200:
            assert _unwrap(workload, r) == DEK


async def test_transfer_is_counted(env: Env, workload: WorkloadKeyPair) -> None:
    """The transfer API shares the attestation and release counters with RCAR, under
    ``api="transfer"``, and its requests are labelled with the whole route template."""
    from prometheus_client import REGISTRY

    def value(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    released = {"key_id": KEY_ID, "decision": "allow", "api": "transfer"}
    route = {
        "server": "kbs",
        "route": "/kbs/v1/keys/{repo}/{kind}/{tag}/transfer",
        "method": "POST",
        "status_class": "2xx",
    }
    before = (
        value("modelseal_key_release_decisions_total", **released),
        value("modelseal_attestations_total", tee="mock-tdx", result="ok"),
        value("modelseal_http_request_duration_seconds_count", **route),
    )
    nonce = await _nonce(env)
    body = _round2(env, nonce, workload.public.spki_der())
    assert _unwrap(workload, await env.client.post(_url(KEY_ID), json=body, headers=HEADERS))
    after = (
        value("modelseal_key_release_decisions_total", **released),
        value("modelseal_attestations_total", tee="mock-tdx", result="ok"),
        value("modelseal_http_request_duration_seconds_count", **route),
    )
    # one release, one verification, two requests (the nonce round and the transfer)
    assert [a - b for a, b in zip(after, before, strict=True)] == [1, 1, 2]
