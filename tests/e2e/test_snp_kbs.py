"""A real SEV-SNP report (shared vectors) at a real ``modelseal kbs serve --snp-certs``.

No SNP hardware here, so the guest side replays a recorded report: its signature, VCEK
chain and TCB verify against the pinned AMD roots, but its REPORT_DATA cannot carry this
KBS's fresh nonce binding, so attestation must fail (replay protection end to end).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest

from modelseal.crypto.secret import SecretBytes
from modelseal.errors import AttestationError
from modelseal.kbs.state import KbsState
from modelseal.loader.kbs_client import KbsClient
from modelseal.tee.snp.evidence import CertEntry, build_evidence
from tests.conftest import free_port
from tests.e2e.kbs_process import stop_process

pytestmark = pytest.mark.e2e

CLI = [sys.executable, "-c", "from modelseal.cli import main; main()"]
KEY_ID = "models/snp-demo/1"


class ReplayAttester:
    """Sends a recorded SNP report whatever report data it is asked to bind."""

    tee: ClassVar[str] = "snp"

    def __init__(self, evidence: Any) -> None:
        self._evidence = evidence
        self.calls: list[bytes] = []

    def evidence(self, report_data: bytes) -> Any:
        self.calls.append(report_data)
        return self._evidence


def test_recorded_report_cannot_answer_a_fresh_challenge(
    shared_vectors: Path, tmp_path: Path
) -> None:
    raw = (shared_vectors / "snp/trustee/test-report.bin").read_bytes()
    vcek = (shared_vectors / "snp/trustee/test-vcek.der").read_bytes()
    certs = tmp_path / "snp-certs"
    certs.mkdir()
    (certs / "chain").write_bytes(
        (shared_vectors / "snp/trustee/milan_ask_ark_asvk.pem").read_bytes()
    )
    state = KbsState.open(tmp_path / "kbs")
    policy = {"apiVersion": "modelseal/v1", "kind": "ReleasePolicy", "tee": ["snp"]}
    state.keys.put(KEY_ID, SecretBytes(bytes(32)), policy=policy, actor="test")
    state.close()
    port = free_port()
    proc = subprocess.Popen(
        [
            *CLI, "kbs", "serve", "--data-dir", str(tmp_path / "kbs"), "--port", str(port),
            "--snp-certs", str(certs),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=dict(os.environ),
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "kbs serve did not start"
            time.sleep(0.1)
        attester = ReplayAttester(build_evidence(raw, [CertEntry("VCEK", vcek)]))
        with KbsClient(url, attester, tee="snp") as client, pytest.raises(AttestationError):
            client.get_resource(KEY_ID)
        assert len(attester.calls) == 1
        assert len(attester.calls[0]) in (32, 48, 64)
    finally:
        stop_process(proc)
        log = proc.stderr.read().decode() if proc.stderr else ""
        if proc.stderr:
            proc.stderr.close()
    # Signature, VCEK chain to the pinned ARK and TCB passed; only the binding failed.
    assert "SNP REPORT_DATA does not match the runtime-data binding" in log
