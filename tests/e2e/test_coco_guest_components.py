"""The CoCo path end to end: loader, ``kbs get`` and policies through guest-components' API.

A real ``kbs serve`` trusts a mock-tdx test root; ``modelseal dev guest-components``
serves api-server-rest's REST API as a mock-tdx TD whose CDH runs real RCAR against that
KBS. The loader gets the model key with ``--key-source cdh`` (never touching the TEE) or
attests itself with evidence from the AA (``--tee aa``); after a load it records the
model digest through ``POST /aa/aael``, and a policy requiring "model X was loaded"
denies before and allows after.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelseal.crypto.secret import SecretBytes
from modelseal.kbs.admin_auth import load_admin_credential, mint_admin_token
from modelseal.loader.destination import inspect_destination
from modelseal.loader.sdk import open_model
from modelseal.owner.kbs_admin import KbsAdminClient
from modelseal.owner.publish import PublishRequest, publish
from modelseal.quickstart.services import Service, free_port, kbs_service, registry_service, run_cli
from modelseal.tee.mock_tdx.attester import Attester
from modelseal.tee.mock_tdx.ca import MockTdxCA
from tests.e2e.coco import guest_components
from tests.e2e.test_mount_e2e import start_mount

pytestmark = pytest.mark.e2e

FILES = {"model.safetensors": os.urandom(120_000), "config.json": b'{"layers": 2}'}
SECOND_KEY = "apps/tls/identity"
SECOND_SECRET = secrets.token_bytes(32)


@dataclass
class Stack:
    root: Path
    ca_dir: Path
    kbs: Service
    registry: Service
    gc: Service
    token: str
    policy: dict[str, Any]
    digest: str
    model_url: str
    denied_url: str


def _request(root: Path, kbs_url: str, registry: Service, model_id: str, policy: Any) -> Any:
    """A publish request for a copy of FILES as ``model_id`` under ``policy``."""
    src = root / model_id
    src.mkdir()
    for rel, data in FILES.items():
        (src / rel).write_bytes(data)
    request = PublishRequest(
        source=src,
        registry_url=registry.url,
        kbs_url=kbs_url,
        model_id=model_id,
        registry_token=(root / "registry" / "upload-token").read_text().strip(),
        policy=policy,
        staging_dir=root / f"staging-{model_id}",
    )
    return request


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("coco")
    ca = MockTdxCA.create(root / "ca")
    mr_td = Attester(ca.directory).measurements["mr_td"]
    kbs = kbs_service(root / "kbs", root, tee_options={"mock_tdx_root": str(ca.root_pem_path)})
    registry = registry_service(root / "registry", root)
    gc: Service | None = None
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
        # the same TD measurements with one last byte changed: never this TD
        wrong = mr_td[:-2] + ("00" if mr_td[-2:] != "00" else "01")
        denied_policy = {**policy, "measurements": [{"mr_td": wrong}]}
        with KbsAdminClient(kbs.url, token) as admin:
            info = publish(_request(root, kbs.url, registry, "coco-model", policy), admin).model
            publish(_request(root, kbs.url, registry, "denied-model", denied_policy), admin)
        gc = guest_components(root, kbs.url, ca.directory)
        assert info.model_digest is not None
        yield Stack(
            root, ca.directory, kbs, registry, gc, token, policy, info.model_digest,
            registry.url + "/models/coco-model", registry.url + "/models/denied-model",
        )  # fmt: skip
    finally:
        for service in (gc, kbs, registry):
            if service is not None:
                service.stop()


@pytest.fixture
def shm() -> Iterator[Path]:
    if not inspect_destination(Path("/dev/shm")).memory_backed:
        pytest.skip("/dev/shm is not memory-backed here")
    path = Path(tempfile.mkdtemp(prefix="ms-coco-", dir="/dev/shm"))
    try:
        yield path / "x"
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _load_via_cdh(model_url: str, dest: Path, cdh_url: str, *extra: str) -> Any:
    return run_cli(
        ["load", "--model", model_url, "--dest", str(dest), "--key-source", "cdh",
         "--cdh-url", cdh_url, *extra]
    )  # fmt: skip


def _receipt(dest: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((dest / ".modelseal" / "receipt.json").read_text())
    return data


def _no_plaintext(dest: Path) -> bool:
    return not dest.exists() or not any(p.is_file() for p in dest.rglob("*"))


def test_cdh_key_source_loads_the_model(stack: Stack, shm: Path) -> None:
    done = _load_via_cdh(stack.model_url, shm, stack.gc.url, "--no-measure")
    assert done.returncode == 0, done.stderr
    for rel, data in FILES.items():
        assert (shm / rel).read_bytes() == data
    receipt = _receipt(shm)
    assert receipt["key_source"] == "cdh"
    assert receipt["model_digest"] == stack.digest
    assert receipt["kbs_url"] == stack.gc.url
    assert receipt["runtime_measurement"] is None


def test_cdh_key_source_from_the_environment(stack: Stack, shm: Path) -> None:
    env = {
        "MODELSEAL_KEY_SOURCE": "cdh",
        "MODELSEAL_CDH_URL": stack.gc.url,
        "MODELSEAL_MEASURE": "false",
    }
    done = run_cli(["load", "--model", stack.model_url, "--dest", str(shm)], env=env)
    assert done.returncode == 0, done.stderr
    assert (shm / "config.json").read_bytes() == FILES["config.json"]


def test_a_denied_key_through_the_cdh_exits_4(stack: Stack, shm: Path) -> None:
    done = _load_via_cdh(stack.denied_url, shm, stack.gc.url)
    assert done.returncode == 4, done.stderr
    assert "ttrpc request error" in done.stderr
    assert _no_plaintext(shm)


def test_an_unreachable_cdh_exits_75(stack: Stack, shm: Path) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    done = run_cli(
        ["load", "--model", stack.model_url, "--dest", str(shm), "--key-source", "cdh",
         "--cdh-url", closed],
        env={"MODELSEAL_RETRIES": "2"},
    )  # fmt: skip
    assert done.returncode == 75, done.stderr
    assert "unreachable" in done.stderr
    assert _no_plaintext(shm)


def test_tee_aa_attests_with_the_agents_evidence(stack: Stack, shm: Path) -> None:
    done = run_cli(
        ["load", "--model", stack.model_url, "--dest", str(shm), "--tee", "aa",
         "--aa-url", stack.gc.url, "--no-measure"]
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    receipt = _receipt(shm)
    # the KBS verified the evidence as the kind the AA reported, not as "aa"
    assert receipt["tee"] == "mock-tdx"
    assert receipt["token_id"]
    assert (shm / "model.safetensors").read_bytes() == FILES["model.safetensors"]


def test_kbs_get_accepts_kbs_uris_through_both_paths(stack: Stack) -> None:
    uri = "kbs:///" + SECOND_KEY.replace("identity", "plain")
    with KbsAdminClient(stack.kbs.url, stack.token) as admin:
        admin.put_key(uri, SecretBytes(SECOND_SECRET), policy=stack.policy)
    cdh = run_cli(["kbs", "get", uri, "--key-source", "cdh", "--cdh-url", stack.gc.url])
    assert cdh.returncode == 0, cdh.stderr
    aa = run_cli(
        ["kbs", "get", uri, "--kbs-url", stack.kbs.url, "--tee", "aa", "--aa-url", stack.gc.url]
    )
    assert aa.returncode == 0, aa.stderr
    for done in (cdh, aa):
        summary = json.loads(done.stdout)
        assert summary["resource"] == "apps/tls/plain"
        assert summary["bytes"] == 32


def test_policy_requiring_the_loaded_model_denies_before_and_allows_after(
    stack: Stack, shm: Path
) -> None:
    """A fresh TD: the second key needs "model X was loaded" in the runtime measurements."""
    gc = guest_components(stack.root, stack.kbs.url, stack.ca_dir)
    try:
        with KbsAdminClient(stack.kbs.url, stack.token) as admin:
            admin.put_key(
                SECOND_KEY,
                SecretBytes(SECOND_SECRET),
                policy={**stack.policy, "loaded_models": [stack.digest]},
            )
        via_cdh = ["kbs", "get", SECOND_KEY, "--key-source", "cdh", "--cdh-url", gc.url]
        via_aa = ["kbs", "get", SECOND_KEY, "--kbs-url", stack.kbs.url, "--tee", "aa",
                  "--aa-url", gc.url]  # fmt: skip
        for args in (via_cdh, via_aa):
            before = run_cli(args)
            assert before.returncode == 4, before.stdout + before.stderr

        load = _load_via_cdh(stack.model_url, shm, gc.url)
        assert load.returncode == 0, load.stderr
        measured = _receipt(shm)["runtime_measurement"]
        assert measured == {"recorded": True, "event": f"modelseal.dev LoadModel {stack.digest}"}

        for args in (via_cdh, via_aa):
            after = run_cli(args)
            assert after.returncode == 0, after.stderr
            assert json.loads(after.stdout)["bytes"] == len(SECOND_SECRET)
        # the evidence the AA serves now carries the AAEL event in its CC event log
        with httpx.Client(trust_env=False, timeout=30) as http:
            evidence = http.get(
                gc.url + "/aa/evidence", params={"runtime_data": "AA", "encoding": "base64"}
            ).json()
        assert evidence["cc_eventlog"]
    finally:
        gc.stop()


def test_the_sdk_takes_the_key_from_the_cdh(stack: Stack) -> None:
    with open_model(
        stack.model_url, key_source="cdh", cdh_url=stack.gc.url, measure=False
    ) as model:
        assert model.model_digest == stack.digest
        assert bytes(model["model.safetensors"]) == FILES["model.safetensors"]


def test_the_agent_serves_a_kbs_token_with_its_key_pair(stack: Stack) -> None:
    with httpx.Client(trust_env=False, timeout=60) as http:
        r = http.get(stack.gc.url + "/aa/token", params={"token_type": "kbs"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/octet-stream"
    body = json.loads(r.content)
    assert list(body) == ["token", "tee_keypair"]
    assert body["token"].count(".") == 2
    assert body["tee_keypair"].startswith("-----BEGIN PRIVATE KEY-----")


@pytest.mark.skipif(
    not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None,
    reason="needs /dev/fuse and fuse3 (scripts/system-packages.txt)",
)
def test_mount_takes_the_key_from_the_cdh(stack: Stack, tmp_path: Path) -> None:
    """``modelseal mount --key-source cdh``: the sidecar in a CoCo pod never attests itself;
    the files read back byte-equal through the kernel, the load is recorded in the runtime
    measurements before serving, and SIGTERM unmounts with exit 0."""
    mount = start_mount(
        tmp_path, "--model", stack.model_url, "--key-source", "cdh", "--cdh-url", stack.gc.url
    )
    try:
        ready = json.loads(mount.ready_file.read_text())
        assert ready["model_digest"] == stack.digest
        for rel, data in FILES.items():
            assert (mount.mountpoint / rel).read_bytes() == data
    finally:
        code, out, err = mount.stop()
    assert code == 0, err
    report = json.loads(out)
    assert report["unmounted"] is True
    assert report["runtime_measurement"] == {
        "recorded": True,
        "event": f"modelseal.dev LoadModel {stack.digest}",
    }
    assert not os.path.ismount(mount.mountpoint)
    assert not mount.ready_file.exists()


@pytest.mark.skipif(shutil.which("cryptsetup") is None, reason="needs cryptsetup-bin")
def test_volume_takes_its_key_from_the_cdh_without_a_kbs_url(stack: Stack, tmp_path: Path) -> None:
    """``modelseal volume create|open --key-source cdh``: no --kbs-url (the CDH knows its
    KBS); the LUKS2 passphrase is exactly the key the KBS holds."""
    key = secrets.token_bytes(32)
    with KbsAdminClient(stack.kbs.url, stack.token) as admin:
        admin.put_key("volumes/coco/key", SecretBytes(key), policy=stack.policy)
    device = tmp_path / "v.luks"
    via_cdh = ["--key-id", "volumes/coco/key", "--key-source", "cdh", "--cdh-url", stack.gc.url]
    created = run_cli(["volume", "create", "--device", str(device), "--size", "32M", *via_cdh])
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["action"] == "created"
    checked = run_cli(["volume", "open", "--device", str(device), "--check", *via_cdh])
    assert checked.returncode == 0, checked.stderr
    accepts = subprocess.run(
        ["cryptsetup", "open", "--test-passphrase", "--key-file", "-", str(device)],
        input=key, capture_output=True, check=False,
    )  # fmt: skip
    assert accepts.returncode == 0, accepts.stderr
