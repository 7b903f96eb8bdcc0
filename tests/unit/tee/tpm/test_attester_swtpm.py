"""Real TPM quotes from swtpm (attester -> verifier): pass, and every tamper is caught."""

from __future__ import annotations

import base64
import copy
import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modelseal.errors import AttestationError, EvidenceError
from modelseal.tee.tpm.attester import Attester
from modelseal.tee.tpm.structures import parse_public
from modelseal.tee.tpm.trust import TrustStore
from modelseal.tee.tpm.verifier import Verifier
from tests.unit.tee.tpm.swtpm import running_swtpm

pytestmark = pytest.mark.swtpm
BINDING = hashlib.sha384(b"runtime data").digest()


@pytest.fixture(scope="module")
def tcti(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_swtpm(tmp_path_factory.mktemp("swtpm")) as value:
        yield value


@pytest.fixture(scope="module")
def attester(tcti: str) -> Attester:
    return Attester(tcti=tcti, event_log=None)


@pytest.fixture(scope="module")
def evidence(attester: Attester) -> dict[str, Any]:
    doc: dict[str, Any] = attester.evidence(BINDING)
    return doc


@pytest.fixture(scope="module")
def verifier(evidence: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Verifier:
    trusted = tmp_path_factory.mktemp("aks") / "ak.pub"
    trusted.write_bytes(base64.b64decode(evidence["ak_tpm_public"]))
    return Verifier(TrustStore.load(trusted))


def test_real_quote_verifies(evidence: dict[str, Any], verifier: Verifier) -> None:
    claims = verifier.verify(evidence, expected_report_data=BINDING, now=time.time())
    assert claims.tee == "tpm"
    assert claims.report_data == BINDING + bytes(16)
    assert sorted(claims.measurements) == sorted(f"pcr{i}" for i in range(24))
    assert claims.measurements["pcr17"] == "ff" * 32
    assert claims.extra["signature"] == "ecdsa-sha256"
    public = parse_public(base64.b64decode(evidence["ak_tpm_public"]))
    assert public.is_attestation_key
    assert public.curve == "p256"


def test_same_tpm_same_ak(attester: Attester, evidence: dict[str, Any]) -> None:
    again = attester.evidence(b"other")
    assert again["ak_public"] == evidence["ak_public"]


def test_wrong_nonce_rejected(evidence: dict[str, Any], verifier: Verifier) -> None:
    with pytest.raises(EvidenceError, match="nonce"):
        verifier.verify(evidence, expected_report_data=BINDING[:-1] + b"\x00", now=time.time())


def test_tampered_quote_or_signature_rejected(evidence: dict[str, Any], verifier: Verifier) -> None:
    for field in ("message", "signature"):
        raw = base64.b64decode(evidence["tpm_quote"][field])
        for pos in range(0, len(raw), max(1, len(raw) // 30)):
            bad = copy.deepcopy(evidence)
            mutated = bytearray(raw)
            mutated[pos] ^= 0x80
            bad["tpm_quote"][field] = base64.b64encode(bytes(mutated)).decode()
            with pytest.raises(EvidenceError):
                verifier.verify(bad, expected_report_data=BINDING, now=time.time())


def test_other_ak_rejected(evidence: dict[str, Any], verifier: Verifier, tcti: str) -> None:
    """A quote by another (valid, TPM-resident) AK of the same TPM is not trusted."""
    other = Attester(tcti=tcti, ak_handle=0x81010009, event_log=None)
    # A different primary template (RSA) gives a different key on the same TPM.
    other_evidence = _rsa_ak_evidence(other)
    assert other_evidence["ak_public"] != evidence["ak_public"]
    with pytest.raises(EvidenceError, match="not trusted"):
        verifier.verify(other_evidence, expected_report_data=BINDING, now=time.time())


def _rsa_ak_evidence(attester: Attester) -> dict[str, Any]:
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        ctx = f"{tmp}/rsa.ctx"
        env = attester._tools.env
        run = lambda *a: subprocess.run(list(a), env=env, check=True, capture_output=True)  # noqa: E731
        run("tpm2_flushcontext", "-t")
        run(
            "tpm2_createprimary", "-C", "o", "-G", "rsa2048:rsassa-sha256:null", "-g", "sha256",
            "-a", "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|restricted|sign",
            "-c", ctx, "-Q",
        )  # fmt: skip
        run("tpm2_evictcontrol", "-C", "o", "-c", ctx, "0x81010009", "-Q")
        run("tpm2_flushcontext", "-t")
    doc: dict[str, Any] = attester.evidence(BINDING)
    return doc


def test_extended_pcr_changes_claims(attester: Attester, verifier: Verifier) -> None:
    before = verifier.verify(
        attester.evidence(BINDING), expected_report_data=BINDING, now=time.time()
    )
    attester.extend_pcr(15, hashlib.sha256(b"unexpected component").digest())
    after = verifier.verify(
        attester.evidence(BINDING), expected_report_data=BINDING, now=time.time()
    )
    assert before.measurements["pcr15"] != after.measurements["pcr15"]
    assert before.measurements["pcr0"] == after.measurements["pcr0"]


def test_missing_ak_without_provisioning(tcti: str) -> None:
    with pytest.raises(AttestationError, match="no attestation key"):
        Attester(tcti=tcti, ak_handle=0x81010042, provision=False, event_log=None).evidence(b"x")


def test_event_log_attached_when_present(tcti: str, tmp_path: Path) -> None:
    log = tmp_path / "binary_bios_measurements"
    log.write_bytes(b"not really a log")
    ev = Attester(tcti=tcti, event_log=log).evidence(b"x")
    assert base64.b64decode(ev["event_log"]) == b"not really a log"


def test_init_data_bound_through_pcr8(tcti: str, verifier: Verifier) -> None:
    """PCR8 = SHA-256(0^32 || init-data digest) (Trustee's TPM binding) on a fresh swtpm."""
    init_data = b'version = "0.1.0"\nalgorithm = "sha256"\n[data]\nmodel_digest = "sha256:ab"\n'
    attester = Attester(tcti=tcti, event_log=None)
    now = time.time()
    assert attester.evidence(BINDING)["tpm_quote"]["pcrs"][8] == "00" * 32
    with pytest.raises(EvidenceError, match="PCR8"):
        verifier.verify(
            attester.evidence(BINDING), expected_report_data=BINDING, now=now, init_data=init_data
        )
    attester.bind_init_data(init_data)
    claims = verifier.verify(
        attester.evidence(BINDING), expected_report_data=BINDING, now=now, init_data=init_data
    )
    assert claims.init_data == {"model_digest": "sha256:ab"}
    assert claims.init_data_digest == hashlib.sha256(init_data).hexdigest()
    other = init_data.replace(b"ab", b"cd")
    with pytest.raises(EvidenceError, match="PCR8"):
        verifier.verify(
            attester.evidence(BINDING), expected_report_data=BINDING, now=now, init_data=other
        )
