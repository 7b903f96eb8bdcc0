"""E2E: a CNAP/ITA-style client against a real `modelseal kbs serve --mock-tdx-root`:
key registered with the admin client, two-round transfer with a mock TDX quote, the SWK
unwrapped with the client's RSA key and the model key recovered from the CNAP layout."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from modelseal._internal.encoding import b64_decode, b64_encode
from modelseal.crypto.cnap_wrap import WorkloadKeyPair
from modelseal.crypto.secret import SecretBytes
from modelseal.format import cnap
from modelseal.kbs.admin_auth import load_admin_credential, mint_admin_token
from modelseal.owner.kbs_admin import KbsAdminClient
from modelseal.tee.mock_tdx.attester import Attester
from modelseal.tee.mock_tdx.ca import MockTdxCA
from tests.conftest import free_port

# one worker runs the module: its module-scoped server checks, at teardown, the log of
# the whole module's traffic
pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("test_kbs_admin_transfer")]

CLI = [sys.executable, "-c", "from modelseal.cli import main; main()"]
DEK = os.urandom(32)
KEY_ID = "models/cnap-e2e/v1"
HEADERS = {"Accept": "application/json", "Attestation-Type": "TDX"}


@dataclass
class Env:
    url: str
    attester: Attester
    log: Path


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    base = tmp_path_factory.mktemp("transfer-e2e")
    ca = MockTdxCA.create(base / "ca")
    data_dir, port = base / "kbs", free_port()
    log = base / "kbs.log"
    cmd = [
        *CLI,
        "kbs",
        "serve",
        "--data-dir",
        str(data_dir),
        "--port",
        str(port),
        "--mock-tdx-root",
        str(ca.root_pem_path),
        "--log-level",
        "debug",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELSEAL_")}
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        attester = Attester(ca.directory)
        token = mint_admin_token(
            load_admin_credential(data_dir), role="publisher", namespaces=["*"], now=time.time()
        )
        policy = {
            "apiVersion": "modelseal/v1",
            "kind": "ReleasePolicy",
            "tee": ["mock-tdx"],
            "measurements": [{"mr_td": attester.measurements["mr_td"]}],
        }
        with KbsAdminClient(url, token) as admin:
            admin.put_key(KEY_ID, SecretBytes(DEK), policy=policy)
        yield Env(url, attester, log)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    text = log.read_text(errors="replace")
    assert "key.transfer" in text or "transferred" in text
    assert DEK.hex() not in text
    assert b64_encode(DEK) not in text


def _transfer(env: Env, workload: WorkloadKeyPair, user_data: bytes) -> httpx.Response:
    url = f"{env.url}/kbs/v1/keys/{KEY_ID}/transfer"
    with httpx.Client(timeout=30) as http:
        nonce = http.post(url, headers={"Accept": "application/json"}).json()
        raw = b64_decode(nonce["val"]) + b64_decode(nonce["iat"])
        evidence = env.attester.evidence(hashlib.sha512(raw + user_data).digest())
        body = {
            "quote": evidence["quote"],
            "nonce": nonce,
            "user_data": b64_encode(user_data),
            "event_log": evidence["cc_eventlog"],
        }
        return http.post(url, json=body, headers=HEADERS)


@pytest.fixture(scope="module")
def pairs() -> tuple[WorkloadKeyPair, WorkloadKeyPair]:
    """Two workload key pairs for the module (RSA-3072 generation is the slow part)."""
    return WorkloadKeyPair(3072), WorkloadKeyPair(3072)


def test_cnap_client_gets_the_key(env: Env, pairs: tuple[WorkloadKeyPair, WorkloadKeyPair]) -> None:
    workload = pairs[0]
    r = _transfer(env, workload, workload.public.spki_der())
    assert r.status_code == 200, r.text
    swk = workload.unwrap(b64_decode(r.json()["wrapped_swk"]))
    assert cnap.decode(swk, b64_decode(r.json()["wrapped_key"])) == DEK


def test_wrong_workload_key_is_refused(
    env: Env, pairs: tuple[WorkloadKeyPair, WorkloadKeyPair]
) -> None:
    workload, other = pairs
    url = f"{env.url}/kbs/v1/keys/{KEY_ID}/transfer"
    with httpx.Client(timeout=30) as http:
        nonce = http.post(url).json()
        raw = b64_decode(nonce["val"]) + b64_decode(nonce["iat"])
        evidence = env.attester.evidence(hashlib.sha512(raw + workload.public.spki_der()).digest())
        body = {
            "quote": evidence["quote"],
            "nonce": nonce,
            "user_data": b64_encode(other.public.spki_der()),
            "event_log": evidence["cc_eventlog"],
        }
        assert http.post(url, json=body, headers=HEADERS).status_code == 401
        # the nonce was spent by the failed attempt
        body["user_data"] = b64_encode(workload.public.spki_der())
        assert http.post(url, json=body, headers=HEADERS).status_code == 401
