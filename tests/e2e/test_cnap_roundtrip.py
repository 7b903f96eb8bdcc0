"""CNAP / Intel Trust Authority round trips against a real ``kbs serve`` (mock-tdx TD).

``publish --format cnap`` writes CNAP model info whose ``kbs_url`` is the key-transfer URL;
``load`` follows it with no extra flag (two rounds: nonce, then quote with REPORTDATA =
SHA-512(val ‖ iat ‖ user_data)). Key ids may be UUIDs as CNAP writes them: the KBS
stores ``default/key/<uuid>`` and serves ``/kbs/v1/keys/<uuid>/transfer``.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from modelseal._internal.encoding import b64_decode, b64_encode
from modelseal.crypto.cnap_wrap import WorkloadKeyPair
from modelseal.crypto.secret import SecretBytes
from modelseal.format import cnap
from modelseal.kbs.admin_auth import load_admin_credential, mint_admin_token
from modelseal.loader.destination import inspect_destination
from modelseal.owner.kbs_admin import KbsAdminClient
from modelseal.protocol.model_info import ModelInfo
from modelseal.quickstart.services import Service, kbs_service, registry_service, run_cli
from modelseal.tee.mock_tdx.attester import Attester
from modelseal.tee.mock_tdx.ca import MockTdxCA

pytestmark = pytest.mark.e2e

WEIGHTS = os.urandom(90_000)
TRUSTEE_ERRORS = "https://github.com/confidential-containers/kbs/errors/"


@dataclass
class Stack:
    root: Path
    ca_dir: Path
    kbs: Service
    registry: Service
    token: str
    policy_file: Path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("cnap")
    ca = MockTdxCA.create(root / "ca")
    mr_td = Attester(ca.directory).measurements["mr_td"]
    kbs = kbs_service(root / "kbs", root, tee_options={"mock_tdx_root": str(ca.root_pem_path)})
    registry = registry_service(root / "registry", root)
    try:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda s: s.start(timeout=60), (kbs, registry)))
        token = mint_admin_token(load_admin_credential(root / "kbs"), ttl=900, now=time.time())
        policy = {
            "apiVersion": "modelseal/v1",
            "kind": "ReleasePolicy",
            "tee": ["mock-tdx"],
            "measurements": [{"mr_td": mr_td}],
        }
        policy_file = root / "policy.json"
        policy_file.write_text(json.dumps(policy))
        yield Stack(root, ca.directory, kbs, registry, token, policy_file)
    finally:
        kbs.stop()
        registry.stop()


@pytest.fixture
def shm() -> Iterator[Path]:
    if not inspect_destination(Path("/dev/shm")).memory_backed:
        pytest.skip("/dev/shm is not memory-backed here")
    path = Path(tempfile.mkdtemp(prefix="ms-cnap-", dir="/dev/shm"))
    try:
        yield path / "x"
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _publish_cnap(stack: Stack, model_id: str, key_id: str) -> ModelInfo:
    src = stack.root / f"{model_id}.safetensors"
    src.write_bytes(WEIGHTS)
    done = run_cli(
        ["publish", str(src), "--registry", stack.registry.url, "--kbs", stack.kbs.url,
         "--token", stack.token, "--registry-token",
         (stack.root / "registry" / "upload-token").read_text().strip(),
         "--staging-dir", str(stack.root / f"staging-{model_id}"), "--model-id", model_id,
         "--format", "cnap", "--key-id", key_id, "--policy", str(stack.policy_file)]
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return ModelInfo.from_json(done.stdout)


@pytest.mark.parametrize("kind", ["uuid", "path"])
def test_publish_cnap_then_load_with_no_extra_flag(stack: Stack, shm: Path, kind: str) -> None:
    key_id = str(uuid.uuid4()) if kind == "uuid" else f"cnap/keys/{kind}"
    info = _publish_cnap(stack, f"legacy-{kind}", key_id)
    assert info.kbs == "simple_kbs"
    assert info.key_id == key_id
    # ITA's transfer link: the UUID alone, or the resource path
    assert info.kbs_url == f"{stack.kbs.url}/kbs/v1/keys/{key_id}/transfer"
    done = run_cli(
        ["load", "--model", f"{stack.registry.url}/models/legacy-{kind}", "--dest", str(shm),
         "--tee", "mock-tdx", "--mock-tdx-dir", str(stack.ca_dir)]
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (shm / f"legacy-{kind}.safetensors").read_bytes() == WEIGHTS
    receipt = json.loads((shm / ".modelseal" / "receipt.json").read_text())
    assert receipt["kbs_url"] == info.kbs_url
    assert receipt["tee"] == "mock-tdx"


def test_a_uuid_key_id_is_put_and_transferred(stack: Stack) -> None:
    key_id = str(uuid.uuid4()).upper()  # ITA prints lower case; any case names the same key
    dek = secrets.token_bytes(32)
    with KbsAdminClient(stack.kbs.url, stack.token) as admin:
        put = admin.put_key(
            key_id, SecretBytes(dek), policy=json.loads(stack.policy_file.read_text())
        )
    assert put.key_id == "default/key/" + key_id.lower()
    # a CNAP/ITA client: round 1 (nonce), round 2 (quote over nonce and the workload key)
    url = f"{stack.kbs.url}/kbs/v1/keys/{key_id.lower()}/transfer"
    workload = WorkloadKeyPair()
    user_data = workload.public.ita_bytes()
    attester = Attester(stack.ca_dir)
    with httpx.Client(timeout=30, trust_env=False) as http:
        nonce = http.post(url, headers={"Accept": "application/json"}).json()
        raw = b64_decode(nonce["val"]) + b64_decode(nonce["iat"])
        evidence = attester.evidence(hashlib.sha512(raw + user_data).digest())
        body = {"quote": evidence["quote"], "nonce": nonce, "user_data": b64_encode(user_data)}
        answer = http.post(url, json=body, headers={"Attestation-Type": "TDX"})
    assert answer.status_code == 200, answer.text
    swk = workload.unwrap(b64_decode(answer.json()["wrapped_swk"]))
    assert cnap.decode(swk, b64_decode(answer.json()["wrapped_key"])) == dek
    # the same key through RCAR, by its UUID, as a CoCo guest fetches default/key/<uuid>
    got = run_cli(
        ["kbs", "get", key_id, "--kbs-url", stack.kbs.url, "--tee", "mock-tdx",
         "--mock-tdx-dir", str(stack.ca_dir)]
    )  # fmt: skip
    assert got.returncode == 0, got.stderr
    summary = json.loads(got.stdout)
    assert summary["resource"] == "default/key/" + key_id.lower()
    assert summary["sha256"] == hashlib.sha256(dek).hexdigest()


@pytest.mark.parametrize(
    ("path", "status", "variant"),
    [
        ("/kbs/v1/keys/not-a-uuid/transfer", 400, "SerdeError"),
        ("/kbs/v1/keys/a/b/transfer", 404, "InvalidRequestPath"),
        ("/kbs/v1/keys/a/b/c/d/transfer", 404, "InvalidRequestPath"),
        ("/kbs/v1/transfer", 404, "InvalidRequestPath"),
    ],
)
def test_unknown_transfer_paths_answer_in_the_documented_shape(
    stack: Stack, path: str, status: int, variant: str
) -> None:
    r = httpx.post(stack.kbs.url + path, timeout=30, trust_env=False)
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"type", "detail"}
    assert body["type"] == TRUSTEE_ERRORS + variant


def test_the_cli_puts_a_uuid_key_and_names_it_by_its_resource_path(stack: Stack) -> None:
    key_id = str(uuid.uuid4())
    put = run_cli(
        ["kbs", "key", "put", key_id, "--kbs", stack.kbs.url, "--token", stack.token,
         "--generate", "--policy", str(stack.policy_file)]
    )  # fmt: skip
    assert put.returncode == 0, put.stderr
    assert json.loads(put.stdout)["key_id"] == f"default/key/{key_id}"
    for spelling in (key_id, f"kbs:///default/key/{key_id}", f"default/key/{key_id}"):
        got = run_cli(
            ["kbs", "key", "get", spelling, "--kbs", stack.kbs.url, "--token", stack.token]
        )
        assert got.returncode == 0, got.stderr
        assert json.loads(got.stdout)["key_id"] == f"default/key/{key_id}"
