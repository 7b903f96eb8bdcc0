"""Tenants on a real ``kbs serve``: a publisher token manages only its namespaces; every
cross-tenant attempt is refused with 403 in the documented shape and audited with the
actor; the admin can do everything."""

from __future__ import annotations

import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from modelseal._internal.encoding import b64url_encode
from modelseal.kbs.admin_auth import load_admin_credential, mint_admin_token
from modelseal.loader.kbs_client import KbsClient
from modelseal.tee.sample.attester import Attester
from tests.e2e.kbs_process import CLI, start_kbs, stop_process

pytestmark = pytest.mark.e2e

POLICY = {"apiVersion": "modelseal/v1", "kind": "ReleasePolicy", "tee": ["sample"]}
LOOSE = "apiVersion: modelseal/v1\nkind: ReleasePolicy\ntee: [sample]\ndebug: true\n"
V1 = "/modelseal/v1"
GEN = {"generate": True}


class Kbs:
    def __init__(self, data_dir: Path, url: str) -> None:
        self.data_dir, self.url = data_dir, url
        self.client = httpx.Client(base_url=url, timeout=30)

    def token(self, role: str, subject: str, *namespaces: str) -> dict[str, str]:
        key = load_admin_credential(self.data_dir)
        value = mint_admin_token(
            key, role=role, subject=subject, namespaces=namespaces, now=time.time()
        )
        return {"Authorization": f"Bearer {value}"}


@pytest.fixture(scope="module")
def kbs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kbs]:
    data_dir = tmp_path_factory.mktemp("tenants") / "kbs"
    # sample evidence: the cross-tenant test releases a key to read its bytes back
    url, proc = start_kbs(data_dir, "--insecure-allow-sample")
    try:
        yield Kbs(data_dir, url)
    finally:
        stop_process(proc)


def _denied(response: httpx.Response) -> None:
    assert response.status_code == 403, response.text
    body = response.json()
    assert body["type"].endswith("/forbidden"), body
    assert "namespaces" in body["detail"]


def test_publishers_stay_in_their_namespaces(kbs: Kbs) -> None:
    acme = kbs.token("publisher", "acme-ci", "acme")
    globex = kbs.token("publisher", "globex-ci", "globex", "models/globex")
    admin = kbs.token("admin", "ops")
    c = kbs.client

    assert (
        c.put(
            f"{V1}/keys/acme/m/v1", json={"generate": True, "policy": POLICY}, headers=acme
        ).status_code
        == 201
    )
    assert c.put(f"{V1}/keys/globex/m/v1", json=GEN, headers=globex).status_code == 201
    assert c.put(f"{V1}/keys/models/globex/v1", json=GEN, headers=globex).status_code == 201

    attempts = [
        c.put(f"{V1}/keys/acme/m/v2", json=GEN, headers=globex),
        c.put(f"{V1}/keys/acme/m/v1/policy", content=LOOSE, headers=globex),
        c.put(f"{V1}/keys/acme/m/v1/model", json={"model_digest": "sha256:" + "0" * 64},
              headers=globex),
        c.get(f"{V1}/keys/acme/m/v1", headers=globex),
        c.get(f"{V1}/keys/acme/m/v1/policy", headers=globex),
        c.post("/kbs/v0/resource/acme/m/v3", content=b"k" * 32, headers=globex),
        # segment-exact: 'models/globex' does not cover 'models/globey' (last byte differs)
        c.put(f"{V1}/keys/models/globey/v1", json=GEN, headers=globex),
        c.put(f"{V1}/keys/globex/m/v2", json=GEN, headers=acme),
        c.put(f"{V1}/keys/acme2/m/v1", json=GEN, headers=acme),  # a longer name is not inside
    ]  # fmt: skip
    for response in attempts:
        _denied(response)

    # listings only show the caller's keys; the admin sees all
    listed = c.get(f"{V1}/keys", headers=globex).json()["keys"]
    assert sorted(k["key_id"] for k in listed) == ["globex/m/v1", "models/globex/v1"]
    everything = {k["key_id"] for k in c.get(f"{V1}/keys", headers=admin).json()["keys"]}
    assert {"acme/m/v1", "globex/m/v1", "models/globex/v1"} <= everything
    assert "acme/m/v2" not in everything

    # acme's policy is untouched, and the admin may change it
    policy = c.get(f"{V1}/keys/acme/m/v1/policy", headers=acme).json()
    assert policy["policy"]["debug"] is False
    assert c.put(f"{V1}/keys/acme/m/v1/policy", content=LOOSE, headers=admin).status_code == 200

    # every attempt is in the audit log with its actor and key
    rows = c.get(f"{V1}/audit", params={"limit": 1000}, headers=admin).json()["entries"]
    denials = [(r["actor"], r["key_id"]) for r in rows if r["action"] == "authz.deny"]
    assert denials == [
        ("admin:globex-ci", "acme/m/v2"),
        ("admin:globex-ci", "acme/m/v1"),
        ("admin:globex-ci", "acme/m/v1"),
        ("admin:globex-ci", "acme/m/v1"),
        ("admin:globex-ci", "acme/m/v1"),
        ("admin:globex-ci", "acme/m/v3"),
        ("admin:globex-ci", "models/globey/v1"),
        ("admin:acme-ci", "globex/m/v2"),
        ("admin:acme-ci", "acme2/m/v1"),
    ]
    assert all(r["decision"] == "deny" for r in rows if r["action"] == "authz.deny")
    assert c.get(f"{V1}/audit/verify", headers=admin).json()["ok"] is True
    # a path that is no key id is a 400 that writes nothing (no audit row, no log line)
    before = len(c.get(f"{V1}/audit", params={"limit": 1000}, headers=admin).json()["entries"])
    for bad in ("acme/m/" + "x" * 300, "acme/m/v%0Aforged"):
        assert c.put(f"{V1}/keys/{bad}", json=GEN, headers=globex).status_code == 400
    after = len(c.get(f"{V1}/audit", params={"limit": 1000}, headers=admin).json()["entries"])
    assert after == before
    me = c.get(f"{V1}/whoami", headers=globex).json()
    assert me["namespaces"] == ["globex", "models/globex"]


def test_an_existing_key_of_another_namespace_is_untouchable(kbs: Kbs) -> None:
    """Replacing, regenerating, loosening, rebinding, revoking, deleting or reading an
    EXISTING key of another tenant: each is a 403 audited with the actor and the key, and
    afterwards the key's bytes, policy and record are exactly what its owner set."""
    acme = kbs.token("publisher", "acme-ci", "acme")
    globex = kbs.token("publisher", "globex-ci", "globex")
    admin = kbs.token("admin", "ops")
    c = kbs.client
    dek = secrets.token_bytes(32)
    kid = "acme/held/v1"
    created = c.put(
        f"{V1}/keys/{kid}", json={"key": b64url_encode(dek), "policy": POLICY}, headers=acme
    )
    assert created.status_code == 201, created.text
    record = c.get(f"{V1}/keys/{kid}", headers=acme).json()
    policy = c.get(f"{V1}/keys/{kid}/policy", headers=acme).json()
    before = len(c.get(f"{V1}/audit", params={"limit": 1000}, headers=admin).json()["entries"])

    other = b64url_encode(dek[:-1] + bytes([dek[-1] ^ 1]))
    tenant_refusals = [
        c.put(f"{V1}/keys/{kid}", json={"key": other}, headers=globex),  # replace the bytes
        c.put(f"{V1}/keys/{kid}", json=GEN, headers=globex),  # rotate (a new random key)
        c.put(f"{V1}/keys/{kid}", json={"key": other, "policy": POLICY}, headers=globex),
        c.put(f"{V1}/keys/{kid}", json={"generate": True, "policy": {**POLICY, "debug": True}},
              headers=globex),
        c.put(f"{V1}/keys/{kid}/policy", content=LOOSE, headers=globex),
        c.put(f"{V1}/keys/{kid}/model", json={"model_digest": "sha256:" + "1" * 64},
              headers=globex),
        c.post(f"/kbs/v0/resource/{kid}", content=b"k" * 32, headers=globex),
        c.get(f"{V1}/keys/{kid}", headers=globex),
        c.get(f"{V1}/keys/{kid}/policy", headers=globex),
    ]  # fmt: skip
    for response in tenant_refusals:
        _denied(response)
    # deleting, revoking or dropping the policy is the admin's alone: refused for the role
    role_refusals = [
        c.delete(f"{V1}/keys/{kid}", headers=globex),
        c.post(f"{V1}/keys/{kid}/revoke", headers=globex),
        c.delete(f"{V1}/keys/{kid}/policy", headers=globex),
        c.delete(f"/kbs/v0/resource/{kid}", headers=globex),
    ]
    for response in role_refusals:
        assert response.status_code == 403, response.text
        assert response.json()["type"].endswith("/forbidden")
        assert "role" in response.json()["detail"]
    assert kid not in {k["key_id"] for k in c.get(f"{V1}/keys", headers=globex).json()["keys"]}

    rows = c.get(f"{V1}/audit", params={"limit": 1000}, headers=admin).json()["entries"]
    new = rows[before:]
    assert [(r["action"], r["actor"], r["key_id"], r["decision"]) for r in new] == [
        ("authz.deny", "admin:globex-ci", kid, "deny")
    ] * (len(tenant_refusals) + len(role_refusals))
    assert c.get(f"{V1}/audit/verify", headers=admin).json()["ok"] is True
    # the key is what acme made it: same record, same policy, same bytes
    assert c.get(f"{V1}/keys/{kid}", headers=acme).json() == record
    assert c.get(f"{V1}/keys/{kid}/policy", headers=acme).json() == policy
    assert policy["policy"]["debug"] is False
    with KbsClient(kbs.url, Attester(), tee="sample") as client:
        assert client.get_resource(kid).reveal() == dek


def test_publisher_tokens_must_name_namespaces(kbs: Kbs) -> None:
    result = subprocess.run(
        [*CLI, "kbs", "token", "--data-dir", str(kbs.data_dir), "--role", "publisher"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "--namespace" in result.stderr
    wildcard = subprocess.run(
        [*CLI, "kbs", "token", "--data-dir", str(kbs.data_dir), "--role", "publisher",
         "--namespace", "*"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    headers = {"Authorization": f"Bearer {wildcard.stdout.strip()}"}
    assert kbs.client.put(f"{V1}/keys/any/where/v1", json=GEN, headers=headers).status_code == 201


def test_role_refusals_are_audited(kbs: Kbs) -> None:
    """A token refused for its role (not only for its namespaces) leaves an audit row with
    its actor, the route's template and the key, as a tenant denial does."""
    admin = kbs.token("admin", "ops")
    acme = kbs.token("publisher", "acme-ci", "acme")
    auditor = kbs.token("auditor", "soc")
    c = kbs.client
    assert c.put(f"{V1}/keys/acme/role/v1", json=GEN, headers=acme).status_code == 201
    before = c.get(f"{V1}/audit", params={"limit": 1000}, headers=admin).json()["entries"]

    attempts = [
        (c.delete(f"{V1}/keys/acme/role/v1", headers=acme), "acme-ci"),
        (c.post(f"{V1}/keys/acme/role/v1/revoke", headers=acme), "acme-ci"),
        (c.delete(f"{V1}/keys/acme/role/v1/policy", headers=acme), "acme-ci"),
        (c.post(f"{V1}/kek/rotate", headers=acme), "acme-ci"),
        (c.get(f"{V1}/audit", headers=acme), "acme-ci"),
        (c.delete("/kbs/v0/resource/acme/role/v1", headers=acme), "acme-ci"),
        (c.put(f"{V1}/keys/acme/role/v2", json=GEN, headers=auditor), "soc"),
        (c.put(f"{V1}/keys/acme/role/v1/policy", content=LOOSE, headers=auditor), "soc"),
    ]
    for response, _ in attempts:
        assert response.status_code == 403, response.text
        assert response.json()["type"].endswith("/forbidden")
        assert "role" in response.json()["detail"]

    rows = c.get(f"{V1}/audit", params={"limit": 1000}, headers=admin).json()["entries"]
    new = [r for r in rows[len(before) :] if r["action"] == "authz.deny"]
    assert [(r["actor"], r["key_id"], r["decision"]) for r in new] == [
        ("admin:acme-ci", "acme/role/v1", "deny"),
        ("admin:acme-ci", "acme/role/v1", "deny"),
        ("admin:acme-ci", "acme/role/v1", "deny"),
        ("admin:acme-ci", None, "deny"),
        ("admin:acme-ci", None, "deny"),
        ("admin:acme-ci", "acme/role/v1", "deny"),
        ("admin:soc", "acme/role/v2", "deny"),
        ("admin:soc", "acme/role/v1", "deny"),
    ]
    assert new[0]["reasons"] == [
        "DELETE /keys/{repo}/{kind}/{tag}: role publisher may not; needs admin"
    ]
    assert new[4]["reasons"] == ["GET /audit: role publisher may not; needs admin or auditor"]
    assert c.get(f"{V1}/keys/acme/role/v1", headers=admin).json()["state"] == "active"
    assert c.get(f"{V1}/audit/verify", headers=admin).json()["ok"] is True
