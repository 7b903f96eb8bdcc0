"""The Azure attesters against a simulated Azure CVM (:mod:`.simulated_vm`): swtpm with
an HCL report in its NV index, a loopback IMDS, real tpm2-tools. For TDX the IMDS signs a
TD quote with the mock-tdx test CA, so the whole az-tdx-vtpm pipeline (vTPM quote, HCL
binding, TD report == quote, DCAP) runs for real; for SEV-SNP only the vTPM half and the
wire shape (no test key can sign an SNP report; Trustee's vectors cover that half).
"""

from __future__ import annotations

import copy
import hashlib
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from modelseal.crypto.x509_pem import pem_to_der
from modelseal.errors import AttestationError, EvidenceError
from modelseal.policy import evaluate, parse_policy
from modelseal.tee.az_snp_vtpm.attester import Attester as SnpAttester
from modelseal.tee.az_tdx_vtpm.attester import Attester as TdxAttester
from modelseal.tee.azure.evidence import parse_evidence
from modelseal.tee.azure.hcl import REPORT_TYPE_SNP, REPORT_TYPE_TDX
from modelseal.tee.azure.vtpm import check_hardware_binding, verify_vtpm
from modelseal.tee.base import pad_report_data
from modelseal.tee.registry import build_config, verifier_for
from tests.unit.tee.azure.simulated_vm import (
    BINDING,
    MR_TD,
    Imds,
    imds,
    paravisor,
    tdx_verifier,
    tpm,
    vtpm,
)

pytestmark = pytest.mark.swtpm
__all__ = ["imds", "vtpm"]  # fixtures used by the tests below


def test_tdx_attester_evidence_verifies_end_to_end(
    vtpm: tuple[str, dict[str, Any]], imds: tuple[str, type[Imds]], tmp_path: Path
) -> None:
    tcti, jwk = vtpm
    url, handler = imds
    runtime = paravisor(tcti, tmp_path, jwk, REPORT_TYPE_TDX, BINDING)
    evidence = TdxAttester(imds_url=url, tcti=tcti, refresh_timeout=2).evidence(BINDING)
    assert evidence["version"] == 2
    assert set(evidence) == {"version", "tpm_quote", "hcl_report", "td_quote"}
    method, path, body = handler.requests[-1]
    assert (method, path) == ("POST", "/acc/tdquote")
    assert body is not None
    assert set(body) == {"report"}

    verifier = tdx_verifier(handler.ca)
    claims = verifier.verify(evidence, expected_report_data=BINDING, now=time.time())
    assert claims.tee == "az-tdx-vtpm"
    assert claims.report_data == BINDING
    assert claims.measurements["mr_td"] == MR_TD.hex()
    assert claims.tcb_status == "UpToDate"
    assert claims.extra["hcl"]["runtime_data_sha256"] == hashlib.sha256(runtime).hexdigest()
    pcrs = tpm(tcti, "tpm2_pcrread", "sha256:17")
    assert claims.measurements["pcr17"] in pcrs.decode().lower()

    policy = parse_policy(
        {
            "apiVersion": "modelseal/v1",
            "kind": "ReleasePolicy",
            "tee": ["az-tdx-vtpm"],
            "measurements": [{"mr_td": MR_TD.hex(), "pcr17": claims.measurements["pcr17"]}],
        }
    )
    assert evaluate(policy, claims, now=time.time()).allowed

    wrong = BINDING[:-1] + bytes([BINDING[-1] ^ 1])
    with pytest.raises(EvidenceError, match="report data binding mismatch"):
        verifier.verify(evidence, expected_report_data=wrong, now=time.time())
    tampered = copy.deepcopy(evidence)
    message = bytearray.fromhex(tampered["tpm_quote"]["message"])
    message[-1] ^= 1
    tampered["tpm_quote"]["message"] = message.hex()
    with pytest.raises(EvidenceError, match="signature is invalid"):
        verifier.verify(tampered, expected_report_data=BINDING, now=time.time())

    # A quote made for another session, glued to this session's HCL report (version 2:
    # the HCL user-data must carry the quoted nonce).
    other = hashlib.sha384(b"another session").digest()
    paravisor(tcti, tmp_path, jwk, REPORT_TYPE_TDX, other)
    second = TdxAttester(imds_url=url, tcti=tcti, refresh_timeout=2).evidence(other)
    spliced = {**evidence, "tpm_quote": second["tpm_quote"]}
    with pytest.raises(EvidenceError, match="user-data does not match"):
        verifier.verify(spliced, expected_report_data=other, now=time.time())


def test_snp_attester_evidence_shape_and_vtpm_half(
    vtpm: tuple[str, dict[str, Any]],
    imds: tuple[str, type[Imds]],
    tmp_path: Path,
    shared_vectors: Path,
) -> None:
    tcti, jwk = vtpm
    url, handler = imds
    paravisor(tcti, tmp_path, jwk, REPORT_TYPE_SNP, BINDING)
    evidence = SnpAttester(imds_url=url, tcti=tcti, refresh_timeout=2).evidence(BINDING)
    assert set(evidence) == {"version", "tpm_quote", "hcl_report", "vcek"}
    ev = parse_evidence(evidence, hardware="snp")
    assert ev.vcek == pem_to_der(handler.vcek_pem.encode())
    verified = verify_vtpm(ev, report_type=REPORT_TYPE_SNP)
    assert verified.quote.attest.extra_data == BINDING
    check_hardware_binding(verified.hcl, verified.hcl.hw_report[0x50:0x90], "the SNP report")
    # The synthetic SNP report carries no AMD signature: the full verifier says so.
    verifier = verifier_for("az-snp-vtpm", build_config("az-snp-vtpm", {}))
    with pytest.raises(EvidenceError, match="SNP report"):
        verifier.verify(evidence, expected_report_data=BINDING, now=time.time())


def test_stale_hcl_report_times_out(
    vtpm: tuple[str, dict[str, Any]], imds: tuple[str, type[Imds]], tmp_path: Path
) -> None:
    """The paravisor never took the report data: the attester refuses, it does not send
    an HCL report made for another session."""
    tcti, jwk = vtpm
    paravisor(tcti, tmp_path, jwk, REPORT_TYPE_TDX, b"an older session")
    attester = TdxAttester(imds_url=imds[0], tcti=tcti, refresh_timeout=0.3)
    with pytest.raises(AttestationError, match="did not take the report data"):
        attester.evidence(BINDING)


def test_wrong_machine_kind_is_unsupported(
    vtpm: tuple[str, dict[str, Any]], imds: tuple[str, type[Imds]], tmp_path: Path
) -> None:
    from modelseal.errors import UnsupportedTee

    tcti, jwk = vtpm
    paravisor(tcti, tmp_path, jwk, REPORT_TYPE_TDX, BINDING)
    with pytest.raises(UnsupportedTee, match="az-snp-vtpm"):
        SnpAttester(imds_url=imds[0], tcti=tcti, refresh_timeout=0.3).evidence(BINDING)


def test_attest_cli_for_both_kinds(
    vtpm: tuple[str, dict[str, Any]],
    imds: tuple[str, type[Imds]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``modelseal attest --tee az-*-vtpm --azure-imds-url URL`` prints the evidence."""
    from modelseal import cli

    tcti, jwk = vtpm
    monkeypatch.setenv("TPM2TOOLS_TCTI", tcti)
    for kind, report_type, member in (
        ("az-tdx-vtpm", REPORT_TYPE_TDX, "td_quote"),
        ("az-snp-vtpm", REPORT_TYPE_SNP, "vcek"),
    ):
        paravisor(tcti, tmp_path, jwk, report_type, BINDING)
        argv = ["attest", "--tee", kind, "--report-data", BINDING.hex()]
        with pytest.raises(SystemExit) as info:
            cli.main([*argv, "--azure-imds-url", imds[0]])
        out = capsys.readouterr()
        assert info.value.code == 0, out.err
        doc = json.loads(out.out)
        assert doc["version"] == 2
        assert member in doc


def test_imds_failures(
    vtpm: tuple[str, dict[str, Any]], imds: tuple[str, type[Imds]], tmp_path: Path
) -> None:
    """IMDS unreachable: transient (exit 75); a path it does not serve: attestation error."""
    from modelseal.errors import TransientError
    from tests.conftest import free_port

    tcti, jwk = vtpm
    paravisor(tcti, tmp_path, jwk, REPORT_TYPE_SNP, BINDING)
    down = SnpAttester(imds_url=f"http://127.0.0.1:{free_port()}", tcti=tcti, timeout=5)
    with pytest.raises(TransientError, match="Azure IMDS"):
        down.evidence(BINDING)
    wrong = SnpAttester(imds_url=imds[0] + "/elsewhere", tcti=tcti, timeout=5)
    with pytest.raises(AttestationError, match="HTTP 404"):
        wrong.evidence(BINDING)


def test_report_data_index_of_another_size_is_redefined(
    vtpm: tuple[str, dict[str, Any]], imds: tuple[str, type[Imds]], tmp_path: Path
) -> None:
    """guest-components defines NV 0x01400002 with the report data's own length; the
    attester redefines it at 64 bytes instead of failing its write."""
    from modelseal.tee.azure.attester import REPORT_DATA_INDEX

    tcti, jwk = vtpm
    index = f"0x{REPORT_DATA_INDEX:08x}"
    env = {"TPM2TOOLS_TCTI": tcti, "PATH": "/usr/bin:/bin"}
    subprocess.run(
        ["tpm2_nvundefine", index, "-C", "o"], env=env, capture_output=True, check=False, timeout=30
    )
    tpm(tcti, "tpm2_nvdefine", index, "-C", "o", "-s", "32", "-a", "ownerread|ownerwrite")
    paravisor(tcti, tmp_path, jwk, REPORT_TYPE_TDX, BINDING)
    TdxAttester(imds_url=imds[0], tcti=tcti, refresh_timeout=2).evidence(BINDING)
    assert b"size: 64" in tpm(tcti, "tpm2_nvreadpublic", index)
    written = tmp_path / "written.bin"
    tpm(tcti, "tpm2_nvread", index, "-C", "o", "-o", str(written))
    assert written.read_bytes() == pad_report_data(BINDING, 64)


def test_init_data_is_bound_through_pcr8(
    vtpm: tuple[str, dict[str, Any]], imds: tuple[str, type[Imds]], tmp_path: Path
) -> None:
    """Trustee's Azure binding: PCR8 extended once with the init-data digest at start-up.
    The matching document is accepted and its claims reported; another one is refused."""
    from modelseal.tee.tpm.attester import Attester as TpmAttester

    tcti, jwk = vtpm
    init = b'version = "0.1.0"\nalgorithm = "sha256"\n[data]\nmodel_digest = "sha256:00"\n'
    TpmAttester(tcti=tcti, event_log=None).bind_init_data(init)
    paravisor(tcti, tmp_path, jwk, REPORT_TYPE_TDX, BINDING)
    evidence = TdxAttester(imds_url=imds[0], tcti=tcti, refresh_timeout=2).evidence(BINDING)
    verifier = tdx_verifier(imds[1].ca)
    claims = verifier.verify(
        evidence, expected_report_data=BINDING, now=time.time(), init_data=init
    )
    assert claims.init_data == {"model_digest": "sha256:00"}
    other = init.replace(b"sha256:00", b"sha256:01")
    with pytest.raises(EvidenceError, match="init-data binding mismatch: PCR8"):
        verifier.verify(evidence, expected_report_data=BINDING, now=time.time(), init_data=other)
