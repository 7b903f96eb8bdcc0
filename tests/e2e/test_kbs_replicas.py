"""Two real ``kbs serve`` processes on one PostgreSQL database, as behind a load balancer:
a session opened on one replica is attested and used on the other, a nonce consumed on one
is refused (401) on both, and the admin credential and token-signing key copied into each
replica's data directory make every token valid on either."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from modelseal.crypto.jose.jwe import decrypt
from modelseal.crypto.jose.jwk import TeeKeyPair
from modelseal.protocol.binding import runtime_data_digest
from modelseal.tee.sample.attester import Attester
from tests.e2e.durability.kbs_driver import AUTH_BODY, KbsCluster, KbsConfig, b64url

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

KEY_ID = "models/replicas/1"
DEK = bytes(range(100, 132))
POLICY = {"apiVersion": "modelseal/v1", "kind": "ReleasePolicy", "tee": ["sample"]}


def _session(http: httpx.Client, url: str, keys: TeeKeyPair) -> tuple[str, dict[str, object]]:
    """POST /auth on ``url``; the session cookie and the attestation body for its nonce."""
    r = http.post(url + "/kbs/v0/auth", content=AUTH_BODY)
    assert r.status_code == 200, r.text
    http.cookies.clear()
    nonce = r.json()["nonce"]
    jwk = keys.public_jwk()
    body = {
        "runtime-data": {"nonce": nonce, "tee-pubkey": jwk},
        "tee-evidence": {
            "primary_evidence": Attester().evidence(runtime_data_digest(nonce, jwk)),
            "additional_evidence": "",
        },
    }
    return r.headers["set-cookie"].split(";", 1)[0], body


def _attest(http: httpx.Client, url: str, cookie: str, body: dict[str, object]) -> httpx.Response:
    r = http.post(url + "/kbs/v0/attest", content=json.dumps(body), headers={"Cookie": cookie})
    http.cookies.clear()
    return r


def test_sessions_nonces_and_tokens_span_replicas(tmp_path: Path, pg_url: str) -> None:
    cluster = KbsCluster(tmp_path, KbsConfig(replicas=2), pg_url)
    cluster.start()
    try:
        first, second = cluster.urls
        admin = {"Authorization": f"Bearer {cluster.admin_token()}"}
        with httpx.Client(timeout=30) as http:
            # a key written through one replica is stored for both
            put = http.put(
                f"{second}/modelseal/v1/keys/{KEY_ID}",
                json={"key": b64url(DEK), "policy": POLICY},
                headers=admin,
            )
            assert put.status_code == 201, put.text

            # session on the first replica, attestation on the second
            keys = TeeKeyPair.generate()
            cookie, body = _session(http, first, keys)
            attested = _attest(http, second, cookie, body)
            assert attested.status_code == 200, attested.text
            token = attested.json()["token"]

            # the consumed nonce is refused on every replica
            for url in (first, second):
                replay = _attest(http, url, cookie, body)
                assert replay.status_code == 401, (url, replay.text)

            # the token the second replica signed releases the key on both
            for url in (first, second):
                r = http.get(
                    f"{url}/kbs/v0/resource/{KEY_ID}", headers={"Authorization": f"Bearer {token}"}
                )
                assert r.status_code == 200, (url, r.text)
                assert decrypt(r.json(), keys).reveal() == DEK
            # and the session cookie works on the replica that did not open it
            r = http.get(f"{first}/kbs/v0/resource/{KEY_ID}", headers={"Cookie": cookie})
            assert r.status_code == 200, r.text
            assert decrypt(r.json(), keys).reveal() == DEK

            # the other direction: opened on the second, replayed on the first after use
            keys = TeeKeyPair.generate()
            cookie, body = _session(http, second, keys)
            assert _attest(http, second, cookie, body).status_code == 200
            assert _attest(http, first, cookie, body).status_code == 401
    finally:
        cluster.stop()
