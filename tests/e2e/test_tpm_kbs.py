"""swtpm E2E: a real TPM quote releases a key from a real ``modelseal kbs serve``.

The loader's KbsClient attests with the TPM attester (tpm2-tools on a private swtpm); the
KBS trusts that TPM's AK (``--tpm-trusted-aks``) and a PCR policy decides. Extending the
PCR afterwards changes the quote, and the same key is then denied (HTTP 403).
"""

from __future__ import annotations

import base64
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

from modelseal.crypto.secret import SecretBytes
from modelseal.errors import PolicyDenied
from modelseal.kbs.state import KbsState
from modelseal.loader.kbs_client import KbsClient
from modelseal.tee.tpm.attester import Attester
from tests.conftest import free_port
from tests.unit.tee.tpm.swtpm import running_swtpm

pytestmark = [pytest.mark.e2e, pytest.mark.swtpm]

CLI = [sys.executable, "-c", "from modelseal.cli import main; main()"]
KEY_ID = "models/tpm-demo/1"
OTHER_KEY_ID = "models/tpm-other/1"
DEK = bytes(range(100, 132))
MEASURED_PCR = 15


@dataclass
class Env:
    url: str
    attester: Attester
    proc: subprocess.Popen[bytes]


def _start_kbs(data_dir: Path, trusted: Path) -> tuple[str, subprocess.Popen[bytes]]:
    port = free_port()
    proc = subprocess.Popen(
        [
            *CLI, "kbs", "serve", "--data-dir", str(data_dir), "--port", str(port),
            "--tpm-trusted-aks", str(trusted), "--log-level", "warning",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=dict(os.environ),
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise RuntimeError(f"kbs serve exited with {proc.returncode}: {err}")
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return url, proc
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("kbs serve did not start")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("tpm-kbs")
    with running_swtpm(root / "swtpm") as tcti:
        attester = Attester(tcti=tcti, event_log=None)
        first = attester.evidence(b"provision")
        trusted = root / "trusted-aks"
        trusted.mkdir()
        (trusted / "node-1.tpm2b").write_bytes(base64.b64decode(first["ak_tpm_public"]))
        attester.extend_pcr(MEASURED_PCR, hashlib.sha256(b"model-server v1").digest())
        pcr = first_pcr(attester)
        state = KbsState.open(root / "kbs")
        policy = {
            "apiVersion": "modelseal/v1",
            "kind": "ReleasePolicy",
            "tee": ["tpm"],
            "measurements": [{f"pcr{MEASURED_PCR}": pcr}],
        }
        state.keys.put(KEY_ID, SecretBytes(DEK), policy=policy, actor="test")
        other = {**policy, "measurements": [{f"pcr{MEASURED_PCR}": "00" * 32}]}
        state.keys.put(OTHER_KEY_ID, SecretBytes(DEK), policy=other, actor="test")
        state.close()
        url, proc = _start_kbs(root / "kbs", trusted)
        try:
            yield Env(url, attester, proc)
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            if proc.stderr:
                proc.stderr.close()


def first_pcr(attester: Attester) -> str:
    evidence = attester.evidence(b"read")
    value: str = evidence["tpm_quote"]["pcrs"][MEASURED_PCR]
    return value


def test_pcr_policy_releases_key_then_changed_pcr_is_denied(env: Env) -> None:
    with KbsClient(env.url, env.attester, tee="tpm") as client:
        dek = client.get_resource(KEY_ID)
        assert dek.reveal() == DEK
        assert client.token_id
        with pytest.raises(PolicyDenied):
            client.get_resource(OTHER_KEY_ID)
    env.attester.extend_pcr(MEASURED_PCR, hashlib.sha256(b"tampered component").digest())
    with KbsClient(env.url, env.attester, tee="tpm") as client, pytest.raises(PolicyDenied):
        client.get_resource(KEY_ID)
