"""swtpm E2E: a real TPM quote releases a key from a real ``modelseal kbs serve``.

The loader's KbsClient attests with the TPM attester (tpm2-tools on a private swtpm); the
KBS trusts that TPM's AK (``--tpm-trusted-aks``) and a PCR policy decides. Extending the
PCR afterwards changes the quote, and the same key is then denied (HTTP 403).
"""

from __future__ import annotations

import base64
import hashlib
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from modelseal.crypto.secret import SecretBytes
from modelseal.errors import PolicyDenied
from modelseal.kbs.state import KbsState
from modelseal.loader.kbs_client import KbsClient
from modelseal.tee.tpm.attester import Attester
from tests.e2e.kbs_process import start_kbs, stop_process
from tests.unit.tee.tpm.swtpm import running_swtpm

pytestmark = [pytest.mark.e2e, pytest.mark.swtpm]

KEY_ID = "models/tpm-demo/1"
OTHER_KEY_ID = "models/tpm-other/1"
DEK = bytes(range(100, 132))
MEASURED_PCR = 15


@dataclass
class Env:
    url: str
    attester: Attester
    proc: subprocess.Popen[bytes]


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
        url, proc = start_kbs(root / "kbs", "--tpm-trusted-aks", str(trusted))
        try:
            yield Env(url, attester, proc)
        finally:
            stop_process(proc)
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
