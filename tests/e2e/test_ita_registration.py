"""Intel Trust Authority KBS registration against a real ``kbs serve --ita-users`` (mock-tdx).

An ITA user's flow, unchanged: ``POST /kbs/v1/token`` (user name and password) ->
``POST /kbs/v1/key-transfer-policies`` -> ``POST /kbs/v1/keys`` with
``transfer_policy_id`` -> the TD fetches the key at the answered ``transfer_link`` with the
loader's ITA/CNAP client. Also: ITA's error shapes (wrong password, no token, wrong
headers, hostile bodies), a referenced policy that cannot be deleted, ``kill -9`` right
after an acknowledged key create, parallel key creates against one policy.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelseal._internal.encoding import b64_encode
from modelseal.errors import PolicyDenied
from modelseal.kbs.admin_auth import load_admin_credential, mint_admin_token
from modelseal.kbs.state import offline_audit_entries, offline_audit_verify
from modelseal.loader.settings import LoaderSettings
from modelseal.loader.transfer_client import transfer_key
from modelseal.quickstart.services import MODELSEAL, Service, child_env, kbs_service
from modelseal.tee.mock_tdx.attester import Attester
from modelseal.tee.mock_tdx.ca import MockTdxCA

pytestmark = pytest.mark.e2e

PASSWORD = "correct horse battery staple"
JSON_HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}
TOKEN_HEADERS = {"Content-Type": "application/json", "Accept": "application/jwt"}


@dataclass
class Stack:
    root: Path
    ca_dir: Path
    mr_td: str
    users: Path
    kbs: Service
    http: httpx.Client

    def login(self, user: str = "kbsadmin", password: str = PASSWORD) -> httpx.Response:
        body = {"username": user, "password": password}
        return self.http.post("/kbs/v1/token", json=body, headers=TOKEN_HEADERS)

    def bearer(self, user: str = "kbsadmin") -> dict[str, str]:
        reply = self.login(user)
        assert reply.status_code == 200, reply.text
        return {**JSON_HEADERS, "Authorization": f"Bearer {reply.text}"}

    def admin_token(self, role: str = "admin", namespaces: tuple[str, ...] = ()) -> str:
        key = load_admin_credential(self.root / "kbs")
        try:
            return mint_admin_token(key, role=role, namespaces=namespaces, now=time.time())
        finally:
            key.wipe()


def _add_user(users: Path, name: str, *extra: str) -> None:
    """``modelseal kbs ita-user add`` with the password on standard input."""
    proc = subprocess.run(
        [*MODELSEAL, "kbs", "ita-user", "add", name, "--file", str(users),
         "--password-file", "-", *extra],
        input=(PASSWORD + "\n").encode(), capture_output=True, env=child_env({}), timeout=120,
        check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr.decode()


def _kbs(root: Path, ca: MockTdxCA, users: Path) -> Service:
    svc = kbs_service(root / "kbs", root, tee_options={"mock_tdx_root": str(ca.root_pem_path)})
    return dataclasses.replace(svc, argv=[*svc.argv, "--ita-users", str(users)])


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("ita")
    ca = MockTdxCA.create(root / "ca")
    mr_td = Attester(ca.directory).measurements["mr_td"]
    users = root / "ita-users.json"
    _add_user(users, "kbsadmin", "--role", "admin")
    _add_user(users, "publisher")
    assert os.stat(users).st_mode & 0o777 == 0o600
    assert PASSWORD.encode() not in users.read_bytes()
    kbs = _kbs(root, ca, users).start(timeout=60)
    try:
        with httpx.Client(base_url=kbs.url, timeout=60, trust_env=False) as http:
            yield Stack(root, ca.directory, mr_td, users, kbs, http)
    finally:
        kbs.stop()


def _policy(stack: Stack, headers: dict[str, str], mrtd: str, **attrs: Any) -> dict[str, Any]:
    body = {
        "attestation_type": "TDX",
        "tdx": {"attributes": {"mrtd": [mrtd], "enforce_tcb_upto_date": True, **attrs}},
    }
    reply = stack.http.post("/kbs/v1/key-transfer-policies", json=body, headers=headers)
    assert reply.status_code == 201, reply.text
    created: dict[str, Any] = reply.json()
    return created


def _key(stack: Stack, headers: dict[str, str], policy_id: str, key: bytes | None = None) -> Any:
    info: dict[str, Any] = {"algorithm": "AES", "key_length": 256}
    if key is not None:
        info["key_data"] = b64_encode(key)
    body = {"key_information": info, "transfer_policy_id": policy_id}
    reply = stack.http.post("/kbs/v1/keys", json=body, headers=headers)
    assert reply.status_code == 201, reply.text
    return reply.json()


def _transfer(stack: Stack, created: dict[str, Any]) -> bytes:
    settings = LoaderSettings(
        model="http://127.0.0.1:9/models/m",
        tee="mock-tdx",
        tee_options={"mock_tdx_dir": stack.ca_dir},
        timeout=60.0,
    )
    release = transfer_key(settings, stack.kbs.url + created["transfer_link"], created["id"])
    try:
        return release.dek.reveal()
    finally:
        release.dek.wipe()


def _flip_last(hex_text: str) -> str:
    return hex_text[:-2] + f"{int(hex_text[-2:], 16) ^ 0x01:02x}"


def test_token_policy_key_transfer_flow(stack: Stack) -> None:
    assert f"Intel Trust Authority logins for the users in {stack.users}" in (
        stack.kbs.log_path.read_text()
    )
    login = stack.login()
    assert login.status_code == 200
    assert login.headers["content-type"] == "text/plain; charset=utf-8"
    assert login.text.count(".") == 2
    assert "\n" not in login.text
    headers = {**JSON_HEADERS, "Authorization": f"Bearer {login.text}"}

    policy = _policy(stack, headers, stack.mr_td.upper())
    assert list(policy) == ["id", "created_at", "attestation_type", "tdx"]
    assert policy["tdx"] == {"attributes": {"mrtd": [stack.mr_td], "enforce_tcb_upto_date": True}}
    assert uuid.UUID(policy["id"]).version == 4
    got = stack.http.get(f"/kbs/v1/key-transfer-policies/{policy['id']}", headers=headers)
    assert got.status_code == 200
    assert got.json() == policy
    listed = stack.http.get("/kbs/v1/key-transfer-policies", headers=headers).json()
    assert policy in listed

    dek = os.urandom(32)
    registered = _key(stack, headers, policy["id"], dek)
    assert list(registered) == [
        "id",
        "key_info",
        "transfer_policy_id",
        "transfer_link",
        "created_at",
    ]
    assert registered["key_info"] == {"algorithm": "AES", "key_length": 256}
    assert registered["transfer_policy_id"] == policy["id"]
    assert registered["transfer_link"] == f"/kbs/v1/keys/{registered['id']}/transfer"
    assert b64_encode(dek) not in json.dumps(registered)
    assert _transfer(stack, registered) == dek  # the loader's ITA/CNAP client, mock-tdx

    generated = _key(stack, headers, policy["id"])
    assert "key_data" not in json.dumps(generated)
    first = _transfer(stack, generated)
    assert len(first) == 32
    assert first == _transfer(stack, generated)

    got = stack.http.get(f"/kbs/v1/keys/{registered['id']}", headers=headers)
    assert got.status_code == 200
    assert got.json() == registered
    search = stack.http.get(
        "/kbs/v1/keys", params={"transferPolicyId": policy["id"]}, headers=headers
    )
    assert [k["id"] for k in search.json()] == [registered["id"], generated["id"]]
    # ITA answers 400 to a key search without a filter
    assert stack.http.get("/kbs/v1/keys", headers=headers).status_code == 400

    # the key is a modelseal key like any other: default/key/<uuid>, policy in its row
    admin = {"Authorization": f"Bearer {stack.admin_token()}"}
    row = stack.http.get(f"/modelseal/v1/keys/default/key/{registered['id']}", headers=admin)
    assert row.status_code == 200
    assert row.json()["policy_digest"].startswith("sha256:")
    actions = [e.action for e in offline_audit_entries(stack.root / "kbs")]
    assert "ita.policy.create" in actions
    assert "key.import" in actions
    assert "key.generate" in actions
    assert "key.transfer" in actions


def test_an_mrtd_differing_in_the_last_byte_is_denied(stack: Stack) -> None:
    headers = stack.bearer()
    policy = _policy(stack, headers, _flip_last(stack.mr_td))
    created = _key(stack, headers, policy["id"], os.urandom(32))
    with pytest.raises(PolicyDenied):
        _transfer(stack, created)
    # the same TD gets the key once the policy names its real MRTD (PUT moves the key)
    other = _policy(stack, headers, stack.mr_td)
    moved = stack.http.put(
        f"/kbs/v1/keys/{created['id']}",
        json={"transfer_policy_id": other["id"]},
        headers=headers,
    )
    assert moved.status_code == 201, moved.text
    assert moved.json()["transfer_policy_id"] == other["id"]
    assert len(_transfer(stack, created)) == 32


def test_wrong_password_and_missing_tokens_answer_as_ita(stack: Stack) -> None:
    for user, password in (("kbsadmin", PASSWORD[:-1] + "X"), ("nobody", PASSWORD)):
        reply = stack.login(user, password)
        assert reply.status_code == 401
        assert reply.content == b'{"error":"401: Invalid username or password"}\n'
    empty = stack.login("kbsadmin", "")
    assert empty.status_code == 400
    assert empty.json() == {
        "error": "400: Username and password of a valid user must be provided to get the token"
    }
    wrong_accept = stack.http.post(
        "/kbs/v1/token",
        json={"username": "kbsadmin", "password": PASSWORD},
        headers={"Content-Type": "application/json", "Accept": "application/json"},
    )
    assert (wrong_accept.status_code, wrong_accept.json()) == (
        415,
        {"error": "Invalid Accept header"},
    )
    for headers in ({}, {"Authorization": "Bearer not.a.token"}):
        reply = stack.http.post(
            "/kbs/v1/key-transfer-policies", json={}, headers={**JSON_HEADERS, **headers}
        )
        assert (reply.status_code, reply.content) == (401, b"Unauthorized\n")
    # a modelseal admin token works directly; a publisher outside default/key does not
    ok = stack.http.get(
        "/kbs/v1/key-transfer-policies",
        headers={**JSON_HEADERS, "Authorization": f"Bearer {stack.admin_token()}"},
    )
    assert ok.status_code == 200
    publisher = stack.bearer("publisher")
    policy = _policy(stack, publisher, stack.mr_td)
    other_ns = {
        **JSON_HEADERS,
        "Authorization": f"Bearer {stack.admin_token('publisher', ('acme',))}",
    }
    refusals = [
        stack.http.post(
            "/kbs/v1/keys",
            json={"key_information": {"algorithm": "AES", "key_length": 256},
                  "transfer_policy_id": policy["id"]},
            headers=other_ns,
        ),
        stack.http.post("/kbs/v1/key-transfer-policies", json={
            "attestation_type": "TDX", "tdx": {"attributes": {"mrtd": [stack.mr_td]}}},
            headers=other_ns),
        stack.http.get("/kbs/v1/key-transfer-policies", headers=other_ns),
        stack.http.get(f"/kbs/v1/key-transfer-policies/{policy['id']}", headers=other_ns),
    ]  # fmt: skip
    for refused in refusals:
        assert (refused.status_code, refused.content) == (401, b"Unauthorized\n")
    # a publisher user may create but not delete (ITA's admin may)
    deleted = stack.http.delete(f"/kbs/v1/key-transfer-policies/{policy['id']}", headers=publisher)
    assert deleted.status_code == 401
    assert stack.http.get("/kbs/v1/version").json()["name"].startswith("Key Broker Service")


HOSTILE = [
    ("/kbs/v1/key-transfer-policies", b"{", "Failed to JSON-decode request body"),
    ("/kbs/v1/key-transfer-policies", b"[]", "Failed to JSON-decode request body"),
    (
        "/kbs/v1/key-transfer-policies",
        b'{"attestation_type":"TDX","tdx":{"attributes":{}},"x":1}',
        "Failed to JSON-decode request body",
    ),
    (
        "/kbs/v1/key-transfer-policies",
        b'{"attestation_type":"TDX","tdx":{"attributes":{"mrtd":["00"]}}}',
        "Invalid request body: mrtd[0] is not a SHA-384 hex string",
    ),
    (
        "/kbs/v1/key-transfer-policies",
        b'{"attestation_type":"TDX","tdx":{"attributes":{},'
        b'"policy_ids":["4517534b-a758-4447-9d2f-3e5606152ed6"]}}',
        "Invalid request body: tdx.policy_ids name policies evaluated by the Intel Trust",
    ),
    (
        "/kbs/v1/key-transfer-policies",
        b'{"attestation_type":"TDX","tdx":{"attributes":{"seamsvn":258}}}',
        "Invalid request body: tdx.attributes.seamsvn cannot be evaluated",
    ),
    (
        "/kbs/v1/key-transfer-policies",
        b'{"attestation_type":"SGX","sgx":{"attributes":{}}}',
        "Invalid request body: attestation_type SGX is not supported",
    ),
    (
        "/kbs/v1/key-transfer-policies",
        b'{"attestation_type":"TDX"}',
        "Invalid request body: a TDX key-transfer policy needs tdx.attributes",
    ),
    (
        "/kbs/v1/key-transfer-policies",
        b"[" * 5000 + b"]" * 5000,
        "Failed to JSON-decode request body",
    ),
    (
        "/kbs/v1/keys",
        b'{"key_information":{"algorithm":"RSA","key_length":3072}}',
        "Invalid request body: only AES keys are supported",
    ),
    (
        "/kbs/v1/keys",
        b'{"key_information":{"algorithm":"AES","key_length":256,"key_data":"AAAA"}}',
        "Invalid request body: key_data must be base64 of a 256-bit",
    ),
    (
        "/kbs/v1/keys",
        b'{"key_information":{"algorithm":"AES","key_length":256,"key_data":"%%%%"}}',
        "Invalid request body: key_data must be base64 encoded",
    ),
    (
        "/kbs/v1/keys",
        b'{"key_information":{"algorithm":"AES","key_length":100}}',
        "Invalid request body: key_length is not supported",
    ),
    (
        "/kbs/v1/keys",
        b'{"key_information":{"algorithm":"AES","key_length":256},'
        b'"transfer_policy_id":"4517534b-a758-4447-9d2f-3e5606152ed6"}',
        "400: Key transfer policy with specified id does not exist",
    ),
    ("/kbs/v1/keys", b'{"transfer_policy_id":"x"}', "Invalid request body: key_information"),
    ("/kbs/v1/keys", b"", "Request body was not provided"),
    ("/kbs/v1/keys", b'{"key_information":' + b" " * 70_000 + b"{}}", "request body too large"),
]


@pytest.mark.parametrize(("path", "body", "error"), HOSTILE, ids=[h[2][:40] for h in HOSTILE])
def test_hostile_bodies_are_400_in_ita_shape(
    stack: Stack, path: str, body: bytes, error: str
) -> None:
    headers = {**JSON_HEADERS, "Authorization": f"Bearer {stack.admin_token()}"}
    reply = stack.http.post(path, content=body, headers=headers)
    assert reply.status_code == 400, reply.text
    assert set(reply.json()) == {"error"}
    assert reply.json()["error"].startswith(error), reply.json()
    assert reply.content.endswith(b"}\n")


def test_a_referenced_policy_cannot_be_deleted(stack: Stack) -> None:
    headers = stack.bearer()
    policy = _policy(stack, headers, stack.mr_td)
    created = _key(stack, headers, policy["id"])
    url = f"/kbs/v1/key-transfer-policies/{policy['id']}"
    refused = stack.http.delete(url, headers=headers)
    assert (refused.status_code, refused.json()) == (
        400,
        {"error": "400: Key transfer policy is associated with keys"},
    )
    assert stack.http.delete(f"/kbs/v1/keys/{created['id']}", headers=headers).status_code == 204
    gone = stack.http.get(f"/kbs/v1/keys/{created['id']}", headers=headers)
    assert (gone.status_code, gone.json()) == (
        404,
        {"error": "404: Key with specified id does not exist"},
    )
    assert stack.http.delete(url, headers=headers).status_code == 204
    assert stack.http.get(url, headers=headers).status_code == 404
    assert stack.http.delete(url, headers=headers).status_code == 404


def test_parallel_key_creates_against_one_policy(stack: Stack) -> None:
    headers = stack.bearer()
    policy = _policy(stack, headers, stack.mr_td)
    with ThreadPoolExecutor(8) as pool:
        created = list(pool.map(lambda _: _key(stack, headers, policy["id"]), range(24)))
    ids = {c["id"] for c in created}
    assert len(ids) == 24
    assert all(c["transfer_policy_id"] == policy["id"] for c in created)
    listed = stack.http.get(
        "/kbs/v1/keys", params={"transferPolicyId": policy["id"]}, headers=headers
    ).json()
    assert {k["id"] for k in listed} == ids
    assert offline_audit_verify(stack.root / "kbs").ok
    refused = stack.http.delete(f"/kbs/v1/key-transfer-policies/{policy['id']}", headers=headers)
    assert refused.status_code == 400


def test_kill_9_after_an_acknowledged_key_create_keeps_key_and_policy(tmp_path: Path) -> None:
    ca = MockTdxCA.create(tmp_path / "ca")
    users = tmp_path / "users.json"
    _add_user(users, "kbsadmin", "--role", "admin")
    kbs = _kbs(tmp_path, ca, users).start(timeout=60)
    try:
        with httpx.Client(base_url=kbs.url, timeout=60, trust_env=False) as http:
            stack = Stack(tmp_path, ca.directory, "", users, kbs, http)
            headers = stack.bearer()
            policy = _policy(stack, headers, Attester(ca.directory).measurements["mr_td"])
            dek = os.urandom(32)
            created = _key(stack, headers, policy["id"], dek)
            assert kbs.process is not None
            os.killpg(kbs.process.pid, signal.SIGKILL)  # right after the 201
            kbs.process.wait(timeout=30)
    finally:
        kbs.stop()
    again = _kbs(tmp_path, ca, users).start(timeout=60)
    try:
        with httpx.Client(base_url=again.url, timeout=60, trust_env=False) as http:
            stack = Stack(tmp_path, ca.directory, "", users, again, http)
            headers = stack.bearer()
            got = http.get(f"/kbs/v1/keys/{created['id']}", headers=headers)
            assert got.status_code == 200
            assert got.json() == created
            kept = http.get(f"/kbs/v1/key-transfer-policies/{policy['id']}", headers=headers)
            assert kept.status_code == 200
            assert kept.json() == policy
            assert _transfer(stack, created) == dek
    finally:
        again.stop()
    assert offline_audit_verify(tmp_path / "kbs").ok


GUIDE = Path(__file__).resolve().parents[2] / "docs" / "guides" / "ita-kbs.md"


def _guide_script() -> str:
    text = GUIDE.read_text()
    block = text.split("<!-- ita-register:begin -->", 1)[1].split("<!-- ita-register:end -->")[0]
    lines = block.strip().splitlines()
    assert lines[0] == "```bash"
    assert lines[-1] == "```"
    return "\n".join(lines[1:-1])


def test_the_guides_curl_script_registers_a_key_the_td_can_fetch(stack: Stack) -> None:
    """The ITA registration script of docs/guides/ita-kbs.md, run as written by bash."""
    dek = os.urandom(32)
    env = {
        "PATH": os.environ["PATH"],
        "KBS_URL": stack.kbs.url + "/kbs/v1",
        "KBS_ADMIN": "publisher",
        "KBS_PASSWORD": PASSWORD,
        "MRTD": stack.mr_td,
        "KEY_B64": b64_encode(dek),
    }
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", _guide_script()],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    key_id = done.stdout.strip().removeprefix("key_id: ")
    assert uuid.UUID(key_id).version == 4
    created = {"id": key_id, "transfer_link": f"/kbs/v1/keys/{key_id}/transfer"}
    assert _transfer(stack, created) == dek
