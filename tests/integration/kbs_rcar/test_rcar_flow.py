"""RCAR over ASGI: every status code and byte shape of docs/reference/protocol.md."""

from __future__ import annotations

import base64
import json
import re

import httpx
import pytest

from modelseal.crypto.jose.compact import split_jwt
from modelseal.crypto.jose.jwk import KEY_ALGS, TeeKeyPair
from tests.integration.kbs_rcar.conftest import (
    DEK,
    DENIED_KEY_ID,
    KEY_ID,
    Kbs,
    attestation_body,
    open_jwe,
    rcar,
)

pytestmark = pytest.mark.anyio
AUTH = {"version": "0.4.0", "tee": "sample", "extra-params": ""}


async def test_auth_challenge_shape(client: httpx.AsyncClient) -> None:
    r = await client.post("/kbs/v0/auth", json=AUTH)
    assert r.status_code == 200
    body = r.json()
    assert body["extra-params"] == ""
    assert len(body["nonce"]) == 44
    assert len(base64.b64decode(body["nonce"], validate=True)) == 32
    cookie = r.headers["set-cookie"]
    assert re.match(r"kbs-session-id=[0-9a-f]{32};", cookie)
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    assert "Secure" not in cookie  # plain HTTP on loopback: a Secure cookie would never return
    second = await client.post("/kbs/v0/auth", json=AUTH)
    assert second.json()["nonce"] != body["nonce"]


@pytest.mark.parametrize("version", ["0.4.0", "0.4.1", "0.4.17"])
async def test_accepts_version_range(client: httpx.AsyncClient, version: str) -> None:
    r = await client.post("/kbs/v0/auth", json={**AUTH, "version": version})
    assert r.status_code == 200


@pytest.mark.parametrize("version", ["0.3.0", "0.5.0", "1.0.0", "0.4", "0.4.0-rc1", "x"])
async def test_refuses_other_versions(client: httpx.AsyncClient, version: str) -> None:
    r = await client.post("/kbs/v0/auth", json={**AUTH, "version": version})
    assert r.status_code == 401
    assert "Version Mismatch" in r.json()["detail"]


@pytest.mark.parametrize("key_alg", KEY_ALGS)
async def test_full_flow_every_key_alg(client: httpx.AsyncClient, key_alg: str) -> None:
    keys = TeeKeyPair.generate(key_alg)
    token = await rcar(client, keys)
    # cookie path (the session remembers the token)
    assert open_jwe(await client.get(f"/kbs/v0/resource/{KEY_ID}"), keys) == DEK
    # bearer path, no cookie
    client.cookies.clear()
    r = await client.get(f"/kbs/v0/resource/{KEY_ID}", headers={"Authorization": f"Bearer {token}"})
    assert open_jwe(r, keys) == DEK
    assert r.headers["cache-control"] == "no-store"


async def test_token_claims(client: httpx.AsyncClient, kbs: Kbs) -> None:
    keys = TeeKeyPair.generate()
    token = await rcar(client, keys)
    header, payload, _, _ = split_jwt(token)
    assert header["alg"] == "ES256"
    assert header["typ"] == "JWT"
    assert header["jwk"]["crv"] == "P-256"
    assert "d" not in header["jwk"]
    assert payload["exp"] - payload["iat"] == 300
    assert payload["aud"] == "modelseal-kbs"
    assert payload["iss"] == "modelseal-kbs"
    assert re.fullmatch(r"[0-9a-f]{32}", payload["jti"])
    assert payload["insecure"] is True
    cpu0 = payload["submods"]["cpu0"]
    assert cpu0["ear.status"] == "warning"  # sample: hardware tier is a warning
    assert set(cpu0["ear.trustworthiness-vector"]) >= {"hardware", "instance-identity"}
    annotated = cpu0["ear.veraison.annotated-evidence"]
    assert annotated["runtime_data_claims"]["tee-pubkey"] == keys.public_jwk()
    assert annotated["sample"]["tcb_status"] == "UpToDate"
    assert annotated["sample"]["insecure"]
    assert "primary_evidence" not in json.dumps(payload)  # no raw evidence in the token


async def test_replayed_nonce_is_refused(client: httpx.AsyncClient) -> None:
    keys = TeeKeyPair.generate()
    r = await client.post("/kbs/v0/auth", json=AUTH)
    body = attestation_body(r.json()["nonce"], keys)
    assert (await client.post("/kbs/v0/attest", json=body)).status_code == 200
    again = await client.post("/kbs/v0/attest", json=body)
    assert again.status_code == 401
    assert again.json()["type"].endswith("/TokenVerifierError")


async def test_wrong_report_data_is_refused_and_burns_the_nonce(client: httpx.AsyncClient) -> None:
    keys = TeeKeyPair.generate()
    r = await client.post("/kbs/v0/auth", json=AUTH)
    nonce = r.json()["nonce"]
    bad = await client.post(
        "/kbs/v0/attest", json=attestation_body(nonce, keys, report_data=b"\x01" * 48)
    )
    assert bad.status_code == 401
    assert bad.json() == {
        "type": "https://github.com/confidential-containers/kbs/errors/AttestationError",
        "detail": "attestation failed",
    }
    good = await client.post("/kbs/v0/attest", json=attestation_body(nonce, keys))
    assert good.status_code == 401


async def test_key_swapped_after_binding_is_refused(client: httpx.AsyncClient) -> None:
    keys, other = TeeKeyPair.generate(), TeeKeyPair.generate()
    r = await client.post("/kbs/v0/auth", json=AUTH)
    body = attestation_body(r.json()["nonce"], keys)
    body["runtime-data"]["tee-pubkey"] = other.public_jwk()
    assert (await client.post("/kbs/v0/attest", json=body)).status_code == 401


async def test_nonce_mismatch_is_refused(client: httpx.AsyncClient) -> None:
    keys = TeeKeyPair.generate()
    await client.post("/kbs/v0/auth", json=AUTH)
    forged = base64.b64encode(b"\x00" * 32).decode()
    r = await client.post("/kbs/v0/attest", json=attestation_body(forged, keys))
    assert r.status_code == 401


async def test_attest_without_session(client: httpx.AsyncClient) -> None:
    keys = TeeKeyPair.generate()
    r = await client.post("/kbs/v0/attest", json=attestation_body("n", keys))
    assert r.status_code == 401
    client.cookies.set("kbs-session-id", "0" * 32)
    r = await client.post("/kbs/v0/attest", json=attestation_body("n", keys))
    assert r.status_code == 401


async def test_expired_session_is_refused(client: httpx.AsyncClient, kbs: Kbs) -> None:
    keys = TeeKeyPair.generate()
    r = await client.post("/kbs/v0/auth", json=AUTH)
    kbs.clock.advance(301)
    r = await client.post("/kbs/v0/attest", json=attestation_body(r.json()["nonce"], keys))
    assert r.status_code == 401


async def test_expired_token_is_refused(client: httpx.AsyncClient, kbs: Kbs) -> None:
    keys = TeeKeyPair.generate()
    token = await rcar(client, keys)
    kbs.clock.advance(306)
    for headers in ({}, {"Authorization": f"Bearer {token}"}):
        r = await client.get(f"/kbs/v0/resource/{KEY_ID}", headers=headers)
        assert r.status_code == 401


async def test_forged_or_missing_token(client: httpx.AsyncClient) -> None:
    keys = TeeKeyPair.generate()
    token = await rcar(client, keys)
    client.cookies.clear()
    assert (await client.get(f"/kbs/v0/resource/{KEY_ID}")).status_code == 401
    h, p, s = token.split(".")
    tampered = f"{h}.{p[:-4]}AAAA.{s}"
    for bad in (tampered, "not-a-token", f"{h}.{p}.", "a" * 20000):
        r = await client.get(
            f"/kbs/v0/resource/{KEY_ID}", headers={"Authorization": f"Bearer {bad}"}
        )
        assert r.status_code == 401, bad[:40]


async def test_deny_and_unknown_are_identical_403(client: httpx.AsyncClient) -> None:
    keys = TeeKeyPair.generate()
    await rcar(client, keys)
    denied = await client.get(f"/kbs/v0/resource/{DENIED_KEY_ID}")
    unknown = await client.get("/kbs/v0/resource/models/nope/1")
    assert denied.status_code == unknown.status_code == 403
    assert denied.content == unknown.content
    assert denied.json()["type"].endswith("/PolicyDeny")
    # the request id differs per request and says nothing about the key
    same = [{k: v for k, v in r.headers.items() if k != "x-request-id"} for r in (denied, unknown)]
    assert same[0] == same[1]


@pytest.mark.parametrize("path", ["a/b", "a/b/c/d", "a/../c", "..x/b/c", "a/b/c%2Fd", "a//c"])
async def test_malformed_resource_path_is_400(client: httpx.AsyncClient, path: str) -> None:
    await rcar(client, TeeKeyPair.generate())
    r = await client.get(f"/kbs/v0/resource/{path}")
    assert r.status_code in (400, 404)  # httpx normalizes "a/../c" away before sending
    if r.status_code == 400:
        assert r.json()["type"].endswith("/SerdeError")


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"version": "0.4.0"}',
        b'{"version": 4, "tee": "sample"}',
    ],
)
async def test_malformed_auth_is_400(client: httpx.AsyncClient, body: bytes) -> None:
    r = await client.post("/kbs/v0/auth", content=body)
    assert r.status_code == 400
    assert set(r.json()) == {"type", "detail"}


async def test_malformed_attest_is_400(client: httpx.AsyncClient) -> None:
    r = await client.post("/kbs/v0/auth", json=AUTH)
    nonce = r.json()["nonce"]
    keys = TeeKeyPair.generate()
    bad_key = attestation_body(nonce, keys)
    bad_key["runtime-data"]["tee-pubkey"] = {"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}
    assert (await client.post("/kbs/v0/attest", json=bad_key)).status_code == 400
    no_evidence = attestation_body(nonce, keys)
    del no_evidence["tee-evidence"]
    assert (await client.post("/kbs/v0/attest", json=no_evidence)).status_code == 400
    rsa15 = attestation_body(nonce, keys)
    rsa15["runtime-data"]["tee-pubkey"] = {"kty": "RSA", "alg": "RSA1_5", "n": "AQAB", "e": "AQAB"}
    assert (await client.post("/kbs/v0/attest", json=rsa15)).status_code == 400


async def test_body_size_limit(client: httpx.AsyncClient) -> None:
    big = b"{" + b" " * (2 * 1024 * 1024 + 10) + b"}"
    r = await client.post("/kbs/v0/auth", content=big)
    assert r.status_code == 400
    assert "too large" in r.json()["detail"]

    async def chunks():  # type: ignore[no-untyped-def]
        for _ in range(3):
            yield b" " * (1024 * 1024)

    r = await client.post("/kbs/v0/auth", content=chunks())
    assert r.status_code == 400


async def test_unknown_tee_is_refused(client: httpx.AsyncClient) -> None:
    r = await client.post("/kbs/v0/auth", json={**AUTH, "tee": "quantum"})
    assert r.status_code == 401


async def test_sample_refused_without_flag(kbs_factory) -> None:  # type: ignore[no-untyped-def]
    kbs = kbs_factory(tee_options={})
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=kbs.app), base_url="http://127.0.0.1"
    ) as c:
        r = await c.post("/kbs/v0/auth", json=AUTH)
        assert r.status_code == 401
        assert "not accepted" in r.json()["detail"]


async def test_health_and_ready(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).status_code == 200
    assert (await client.get("/readyz")).json() == {"status": "ready"}


async def test_init_data_reaches_the_token(client: httpx.AsyncClient) -> None:
    keys = TeeKeyPair.generate()
    r = await client.post("/kbs/v0/auth", json=AUTH)
    toml = 'version = "0.1.0"\nalgorithm = "sha384"\n[data]\nmodel = "demo"\n'
    body = attestation_body(
        r.json()["nonce"], keys, **{"init-data": {"format": "toml", "body": toml}}
    )
    r = await client.post("/kbs/v0/attest", json=body)
    assert r.status_code == 200
    _, payload, _, _ = split_jwt(r.json()["token"])
    annotated = payload["submods"]["cpu0"]["ear.veraison.annotated-evidence"]
    assert annotated["init_data_claims"] == {"model": "demo"}
    assert annotated["sample"]["init_data_digest"]


async def test_no_key_bytes_in_logs(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    keys = TeeKeyPair.generate()
    token = await rcar(client, keys)
    session_id = client.cookies["kbs-session-id"]
    assert open_jwe(await client.get(f"/kbs/v0/resource/{KEY_ID}"), keys) == DEK
    await client.get(f"/kbs/v0/resource/{DENIED_KEY_ID}")
    text = caplog.text
    assert "released models/demo/1" in text
    # credentials are not logged either: the session id and the token
    assert session_id not in text
    assert token.split(".")[2] not in text
    for form in (
        DEK.hex(),
        base64.b64encode(DEK).decode(),
        base64.urlsafe_b64encode(DEK).decode().rstrip("="),
    ):
        assert form not in text
    assert repr(DEK)[2:30] not in text


async def test_two_replicas_share_sessions(tmp_path, clock) -> None:  # type: ignore[no-untyped-def]
    """Two apps over one database (two KBS replicas): auth on one, attest on the other,
    replay on either fails, and both honour each other's tokens (shared signing key)."""
    from modelseal.kbs.app import create_app
    from modelseal.kbs.settings import KbsSettings
    from modelseal.kbs.state import KbsState
    from tests.integration.kbs_rcar.conftest import make_kbs

    first = make_kbs(tmp_path, clock)
    second_state = KbsState.open(tmp_path / "kbs", clock=clock)
    second = create_app(
        KbsSettings(
            data_dir=tmp_path / "kbs", tee_options={"insecure_allow_sample": True}
        ).validated(),
        second_state,
        clock=clock,
    )
    try:
        a = httpx.AsyncClient(transport=httpx.ASGITransport(app=first.app), base_url="http://a")
        b = httpx.AsyncClient(transport=httpx.ASGITransport(app=second), base_url="http://b")
        async with a, b:
            keys = TeeKeyPair.generate()
            r = await a.post("/kbs/v0/auth", json=AUTH)
            cookie = {"Cookie": f"kbs-session-id={r.cookies['kbs-session-id']}"}
            a.cookies.clear()
            body = attestation_body(r.json()["nonce"], keys)
            attested = await b.post("/kbs/v0/attest", json=body, headers=cookie)
            assert attested.status_code == 200
            assert (await a.post("/kbs/v0/attest", json=body, headers=cookie)).status_code == 401
            assert (await b.post("/kbs/v0/attest", json=body, headers=cookie)).status_code == 401
            token = attested.json()["token"]
            for replica in (a, b):
                r = await replica.get(
                    f"/kbs/v0/resource/{KEY_ID}", headers={"Authorization": f"Bearer {token}"}
                )
                assert open_jwe(r, keys) == DEK
            # the cookie path works on the replica that did not run the handshake
            r = await a.get(f"/kbs/v0/resource/{KEY_ID}", headers=cookie)
            assert open_jwe(r, keys) == DEK
    finally:
        first.state.close()
        second_state.close()


async def test_backend_outage_is_503(
    client: httpx.AsyncClient, kbs: Kbs, monkeypatch: pytest.MonkeyPatch
) -> None:
    from modelseal.errors import BackendError

    keys = TeeKeyPair.generate()
    token = await rcar(client, keys)

    def down(_conn: object) -> None:
        raise BackendError("database error: OperationalError")

    def unit(*_a: object, **_k: object) -> object:
        return down  # the unit of work fails inside the database transaction

    monkeypatch.setattr(kbs.state, "release_unit", unit)
    r = await client.get(f"/kbs/v0/resource/{KEY_ID}", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 503
    assert r.headers["retry-after"] == "5"
    assert r.json()["type"].endswith("/BackendUnavailable")
    assert "OperationalError" not in r.text

    monkeypatch.setattr(kbs.app.state.kbs.sessions, "insert_unit", unit)
    assert (await client.post("/kbs/v0/auth", json=AUTH)).status_code == 503

    def no_db() -> None:
        raise RuntimeError("connection refused")

    monkeypatch.setattr(kbs.state.db.engine, "connect", no_db)
    assert (await client.get("/readyz")).status_code == 503
    assert (await client.get("/healthz")).status_code == 200


async def test_served_app_routes(kbs: Kbs) -> None:
    """The app uvicorn serves: RCAR, body limits, health, admin and unknown paths."""
    transport = httpx.ASGITransport(app=kbs.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
        keys = TeeKeyPair.generate()
        await rcar(c, keys)
        assert open_jwe(await c.get(f"/kbs/v0/resource/{KEY_ID}"), keys) == DEK
        denied = await c.get(f"/kbs/v0/resource/{DENIED_KEY_ID}")
        assert denied.status_code == 403
        big = await c.post("/kbs/v0/auth", content=b" " * (3 * 1024 * 1024))
        assert big.status_code == 400
        assert (await c.get("/healthz")).status_code == 200
        assert (await c.get("/modelseal/v1/keys")).status_code == 401  # admin API, no token
        assert (await c.get("/kbs/v0/unknown")).status_code == 404
