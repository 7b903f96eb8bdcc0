"""The admin API in-process (httpx.ASGITransport): auth, roles, keys, policies, audit."""

from __future__ import annotations

import base64
import logging
import os
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from modelseal._internal.clock import FixedClock
from modelseal._internal.encoding import b64url_encode
from modelseal.crypto.secret import SecretBytes
from modelseal.kbs.admin_api import admin_router, trustee_admin_router
from modelseal.kbs.admin_auth import mint_admin_token
from modelseal.kbs.state import KbsState
from modelseal.protocol.claims import Claims

pytestmark = pytest.mark.anyio

BASE = "http://kbs.test"
PREFIX = "/modelseal/v1"
POLICY = {"apiVersion": "modelseal/v1", "kind": "ReleasePolicy", "tee": ["sample"]}
DIGEST = "sha256:" + "ab" * 32


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class Env:
    client: httpx.AsyncClient
    state: KbsState
    clock: FixedClock

    def token(self, role: str = "admin", ttl: int = 300) -> str:
        return mint_admin_token(
            self.state.admin_key,
            role=role,
            ttl=ttl,
            namespaces=["*"] if role == "publisher" else [],
            now=self.clock.now(),
        )

    def auth(self, role: str = "admin") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(role)}"}


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    clock = FixedClock()
    state = KbsState.open(tmp_path / "kbs", clock=clock)
    app = FastAPI()
    app.include_router(admin_router(state), prefix=PREFIX)
    app.include_router(trustee_admin_router(state))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=BASE + PREFIX) as client:
        yield Env(client, state, clock)
    state.close()


async def test_alg_none_and_tampered_payload_rejected(env: Env) -> None:
    token = env.token("auditor")
    h, p, s = token.split(".")
    none_header = b64url_encode(b'{"alg":"none","typ":"JWT"}')
    admin_payload = base64.urlsafe_b64decode(p + "==").replace(b'"auditor"', b'"admin"')
    for forged in (f"{none_header}.{p}.", f"{h}.{b64url_encode(admin_payload)}.{s}"):
        r = await env.client.post("/kek/rotate", headers={"Authorization": f"Bearer {forged}"})
        assert r.status_code == 401


async def test_roles(env: Env) -> None:
    body = {"generate": True, "policy": POLICY}
    r = await env.client.put("/keys/m/k/v1", json=body, headers=env.auth("auditor"))
    assert r.status_code == 403
    r = await env.client.put("/keys/m/k/v1", json=body, headers=env.auth("publisher"))
    assert r.status_code == 201
    for method, path in [
        ("POST", "/keys/m/k/v1/revoke"),
        ("DELETE", "/keys/m/k/v1"),
        ("POST", "/kek/rotate"),
        ("GET", "/audit"),
    ]:
        r = await env.client.request(method, path, headers=env.auth("publisher"))
        assert r.status_code == 403, (method, path)
    r = await env.client.get("/audit", headers=env.auth("auditor"))
    assert r.status_code == 200
    r = await env.client.get("/keys", headers=env.auth("auditor"))
    assert r.status_code == 200
    r = await env.client.get("/whoami", headers=env.auth("publisher"))
    assert r.json() == {"subject": "operator", "roles": ["publisher"], "namespaces": ["*"]}


async def test_import_list_get_revoke_delete(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    raw = os.urandom(32)
    body = {"key": b64url_encode(raw), "policy": POLICY, "model_digest": DIGEST.upper()}
    r = await env.client.put("/keys/models/llama/v1", json=body, headers=env.auth())
    assert r.status_code == 201, r.text
    info = r.json()
    assert info["key_id"] == "models/llama/v1"
    assert info["state"] == "active"
    assert info["model_digest"] == DIGEST
    assert info["created"] is True
    assert info["policy_digest"].startswith("sha256:")
    assert "key" not in info
    # identical re-put is idempotent; different bytes conflict
    r = await env.client.put("/keys/models/llama/v1", json=body, headers=env.auth())
    assert r.status_code == 200
    assert r.json()["created"] is False
    other = {"key": b64url_encode(os.urandom(32))}
    r = await env.client.put("/keys/models/llama/v1", json=other, headers=env.auth())
    assert r.status_code == 409
    r = await env.client.put("/keys/models/llama/v1", json={"generate": True}, headers=env.auth())
    assert r.status_code == 409

    r = await env.client.get("/keys", headers=env.auth())
    assert [k["key_id"] for k in r.json()["keys"]] == ["models/llama/v1"]
    r = await env.client.get("/keys", params={"model_digest": DIGEST}, headers=env.auth())
    assert len(r.json()["keys"]) == 1
    r = await env.client.get("/models", headers=env.auth("auditor"))
    assert r.json()["models"] == [
        {
            "model_digest": DIGEST,
            "key_id": "models/llama/v1",
            "state": "active",
            "policy_digest": info["policy_digest"],
        }
    ]
    claims = Claims(tee="sample", debug=False, report_data=b"", insecure=True)
    got = env.state.release("models/llama/v1", claims, token_id="t", requester="r")
    assert got == SecretBytes(raw)

    r = await env.client.post("/keys/models/llama/v1/revoke", headers=env.auth())
    assert r.json()["state"] == "revoked"
    r = await env.client.delete("/keys/models/llama/v1", headers=env.auth())
    assert r.status_code == 200
    r = await env.client.get("/keys/models/llama/v1", headers=env.auth())
    assert r.status_code == 404

    text = caplog.text + "".join(str(rec.args) for rec in caplog.records)
    assert raw.hex() not in text
    assert b64url_encode(raw) not in text
    assert base64.b64encode(raw).decode() not in text


async def test_bad_requests(env: Env) -> None:
    cases = [
        ("/keys/models/x/v1", {}),
        ("/keys/models/x/v1", {"generate": True, "key": b64url_encode(b"k" * 32)}),
        ("/keys/models/x/v1", {"key": "not base64!"}),
        ("/keys/models/x/v1", {"key": b64url_encode(b"short")}),
        ("/keys/models/x/v1", {"generate": True, "surprise": 1}),
        ("/keys/models/x/v1", {"generate": True, "policy": {**POLICY, "teee": ["tdx"]}}),
        ("/keys/models/x/v1", {"generate": True, "model_digest": "md5:00"}),
        ("/keys/..bad/x/v1", {"generate": True}),
    ]
    for path, body in cases:
        r = await env.client.put(path, json=body, headers=env.auth())
        assert r.status_code == 400, (path, body, r.text)
        assert r.json()["type"].endswith("/bad-request")
    r = await env.client.put(
        "/keys/models/x/v1", content=b"{not json", headers=env.auth() | {"content-type": "x"}
    )
    assert r.status_code == 400
    r = await env.client.get("/audit", params={"limit": "abc"}, headers=env.auth())
    assert r.status_code == 400
    assert env.state.keys.list_keys() == []


async def test_policy_set_get_yaml_and_json(env: Env) -> None:
    r = await env.client.put("/keys/m/k/v1", json={"generate": True}, headers=env.auth())
    assert r.json()["policy_digest"] is None
    r = await env.client.get("/keys/m/k/v1/policy", headers=env.auth())
    assert r.json() == {"key_id": "m/k/v1", "policy": None, "policy_digest": None}
    yaml_doc = (
        b"apiVersion: modelseal/v1\nkind: ReleasePolicy\ntee: [tdx]\n"
        b"measurements:\n  - {mr_td: 'AABB'}\n"
    )
    r = await env.client.put("/keys/m/k/v1/policy", content=yaml_doc, headers=env.auth("publisher"))
    assert r.status_code == 200, r.text
    doc = r.json()["policy"]
    assert doc["measurements"] == [{"mr_td": "aabb"}]
    assert doc["tcb_status"] == ["UpToDate"]
    assert doc["debug"] is False
    r = await env.client.put("/keys/m/k/v1/policy", json={"tee": ["tdx"]}, headers=env.auth())
    assert r.status_code == 400
    assert "apiVersion" in r.json()["detail"]
    r = await env.client.get("/keys/m/k/v1/policy", headers=env.auth("auditor"))
    assert r.json()["policy"] == doc
    r = await env.client.put("/keys/m/none/v1/policy", json=POLICY, headers=env.auth())
    assert r.status_code == 404
    r = await env.client.delete("/keys/m/k/v1/policy", headers=env.auth())
    assert r.json()["policy_digest"] is None


async def test_bind_model(env: Env) -> None:
    await env.client.put("/keys/m/k/v1", json={"generate": True}, headers=env.auth())
    r = await env.client.put(
        "/keys/m/k/v1/model", json={"model_digest": DIGEST}, headers=env.auth("publisher")
    )
    assert r.json()["model_digest"] == DIGEST
    r = await env.client.get("/models", params={"digest": DIGEST}, headers=env.auth())
    assert [m["key_id"] for m in r.json()["models"]] == ["m/k/v1"]


async def test_rotate_kek_keeps_keys(env: Env) -> None:
    raw = os.urandom(32)
    body = {"key": b64url_encode(raw), "policy": POLICY}
    await env.client.put("/keys/m/k/v1", json=body, headers=env.auth())
    await env.client.put("/keys/m/k/v2", json={"generate": True}, headers=env.auth())
    old_kek = (env.state.data_dir / "kek").read_bytes()
    r = await env.client.post("/kek/rotate", headers=env.auth())
    assert r.status_code == 200
    result = r.json()
    assert result["rewrapped"] == 2
    assert result["old_kek_id"] != result["new_kek_id"]
    assert (env.state.data_dir / "kek").read_bytes() != old_kek
    assert not (env.state.data_dir / "kek.next").exists()
    r = await env.client.get("/keys", headers=env.auth())
    assert {k["kek_id"] for k in r.json()["keys"]} == {result["new_kek_id"]}
    claims = Claims(tee="sample", debug=False, report_data=b"", insecure=True)
    assert env.state.release("m/k/v1", claims, token_id="t", requester="r") == SecretBytes(raw)
    r = await env.client.get("/audit/verify", headers=env.auth())
    assert r.json()["ok"] is True


async def test_audit_pages_and_tamper(env: Env) -> None:
    for i in range(5):
        await env.client.put(f"/keys/m/k/v{i}", json={"generate": True}, headers=env.auth())
    r = await env.client.get("/audit", params={"limit": 2}, headers=env.auth("auditor"))
    page = r.json()
    assert [e["seq"] for e in page["entries"]] == [1, 2]
    assert page["next_after"] == 2
    r = await env.client.get("/audit", params={"after": 4, "limit": 2}, headers=env.auth())
    assert [e["seq"] for e in r.json()["entries"]] == [5]
    assert r.json()["next_after"] is None
    assert r.json()["entries"][0]["actor"] == "admin:operator"
    assert r.json()["entries"][0]["action"] == "key.generate"
    r = await env.client.get("/audit/verify", headers=env.auth("auditor"))
    assert r.json() == {"ok": True, "rows": 5, "first_bad_seq": None, "reason": None}
    db = sqlite3.connect(env.state.data_dir / "kbs.sqlite3")
    db.execute("UPDATE ms_audit SET actor = 'someone-else' WHERE seq = 3")
    db.commit()
    db.close()
    r = await env.client.get("/audit/verify", headers=env.auth())
    assert r.json()["ok"] is False
    assert r.json()["first_bad_seq"] == 3


async def test_trustee_kbs_client_set_and_delete_resource(env: Env) -> None:
    """What `kbs-client config --admin-token-file F set-resource|delete-resource` sends."""
    url = BASE + "/kbs/v0/resource/models/trustee/key1"
    raw = os.urandom(32)
    octets = {"content-type": "application/octet-stream"}
    r = await env.client.post(url, content=raw, headers=octets)
    assert r.status_code == 401
    r = await env.client.post(url, content=raw, headers=octets | env.auth("auditor"))
    assert r.status_code == 403
    r = await env.client.post(url, content=raw, headers=octets | env.auth("publisher"))
    assert r.status_code == 201
    r = await env.client.post(url, content=raw, headers=octets | env.auth())
    assert r.status_code == 200
    r = await env.client.post(url, content=os.urandom(32), headers=octets | env.auth())
    assert r.status_code == 409
    r = await env.client.post(url.replace("key1", "key2"), content=b"x" * 7, headers=env.auth())
    assert r.status_code == 400
    await env.client.put("/keys/models/trustee/key1/policy", json=POLICY, headers=env.auth())
    claims = Claims(tee="sample", debug=False, report_data=b"", insecure=True)
    got = env.state.release("models/trustee/key1", claims, token_id="t", requester="r")
    assert got == SecretBytes(raw)
    r = await env.client.delete(url, headers=env.auth("publisher"))
    assert r.status_code == 403
    r = await env.client.delete(url, headers=env.auth())
    assert r.status_code == 200
    r = await env.client.delete(url, headers=env.auth())
    assert r.status_code == 404
