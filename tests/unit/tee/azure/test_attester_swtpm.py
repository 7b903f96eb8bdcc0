"""The Azure attesters against swtpm: a simulated paravisor and IMDS, real tpm2-tools.

The software TPM plays the Azure vTPM: an RSA AK persisted at 0x81000003 and an HCL
report written to NV index 0x01400001 whose runtime claims name that AK and carry the
session's report data as user-data (what the paravisor writes after the guest sets NV
0x01400002). A loopback HTTP server plays the instance metadata service: for TDX it
turns the TDREPORT it is sent into a TD quote signed by the mock-tdx test CA, so the
whole az-tdx-vtpm pipeline (vTPM quote, HCL binding, TD report == quote, DCAP) runs for
real; for SEV-SNP it serves a VCEK (no test key can sign an SNP report, so the SNP half
is covered by Trustee's vectors and here only the vTPM half and the wire shape).
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from modelseal.crypto.x509_pem import pem_to_der
from modelseal.errors import AttestationError, EvidenceError
from modelseal.policy import evaluate, parse_policy
from modelseal.tee.az_snp_vtpm.attester import Attester as SnpAttester
from modelseal.tee.az_tdx_vtpm.attester import Attester as TdxAttester
from modelseal.tee.az_tdx_vtpm.verifier import Verifier as AzTdxVerifier
from modelseal.tee.azure.attester import AK_HANDLE, HCL_REPORT_INDEX
from modelseal.tee.azure.evidence import parse_evidence
from modelseal.tee.azure.hcl import (
    REPORT_TYPE_SNP,
    REPORT_TYPE_TDX,
    SNP_REPORT_SIZE,
    TD_REPORT_SIZE,
    build_hcl_report,
)
from modelseal.tee.azure.vtpm import check_hardware_binding, verify_vtpm
from modelseal.tee.base import pad_report_data
from modelseal.tee.mock_tdx.ca import MockTdxCA
from modelseal.tee.mock_tdx.quote_builder import TD_ATTRIBUTES, XFAM, TdFields, build_quote
from modelseal.tee.registry import build_config, verifier_for
from modelseal.tee.tdx.collateral import CollateralStore
from modelseal.tee.tdx.verifier import Verifier as TdxVerifier
from modelseal.tee.tpm.structures import parse_public
from tests.unit.tee.tpm.swtpm import running_swtpm

pytestmark = pytest.mark.swtpm
BINDING = hashlib.sha384(b"azure runtime data").digest()
MR_TD = hashlib.sha384(b"azure td image").digest()
AK_ATTRIBUTES = "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|restricted|sign"
#: Azure's HCL index holds 2600 bytes; libtpms caps an NV index at 2048 (TPM2_PT_NV_INDEX_MAX),
#: enough for a runtime-claims JSON with one key.
NV_SIZE = 2048


def _tpm(tcti: str, *args: str) -> bytes:
    proc = subprocess.run(
        list(args), env={"TPM2TOOLS_TCTI": tcti, "PATH": "/usr/bin:/bin"},
        capture_output=True, check=True, timeout=30,
    )  # fmt: skip
    return proc.stdout


@pytest.fixture(scope="module")
def vtpm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, Any]]]:
    """(TCTI, HCLAkPub JWK): swtpm with the Azure AK persisted and the HCL index defined."""
    work = tmp_path_factory.mktemp("azure-vtpm")
    with running_swtpm(work / "state") as tcti:
        ctx, pub = work / "ak.ctx", work / "ak.pub"
        _tpm(tcti, "tpm2_createprimary", "-C", "o", "-G", "rsa2048:rsassa-sha256:null",
             "-g", "sha256", "-a", AK_ATTRIBUTES, "-c", str(ctx), "-Q")  # fmt: skip
        _tpm(tcti, "tpm2_evictcontrol", "-C", "o", "-c", str(ctx), f"0x{AK_HANDLE:08x}", "-Q")
        _tpm(tcti, "tpm2_flushcontext", "-t")
        _tpm(tcti, "tpm2_readpublic", "-c", f"0x{AK_HANDLE:08x}", "-o", str(pub), "-Q")
        public = parse_public(pub.read_bytes())
        _tpm(tcti, "tpm2_nvdefine", f"0x{HCL_REPORT_INDEX:08x}", "-C", "o",
             "-s", str(NV_SIZE), "-a", "ownerread|ownerwrite")  # fmt: skip
        jwk = {
            "kid": "HCLAkPub",
            "key_ops": ["sign"],
            "kty": "RSA",
            "e": _b64url(public.rsa_e.to_bytes(3, "big")),
            "n": _b64url(public.rsa_n.to_bytes(256, "big")),
        }
        yield tcti, jwk


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _runtime_claims(jwk: dict[str, Any], user_data: bytes) -> bytes:
    doc = {
        "keys": [jwk],
        "vm-configuration": {"secure-boot": True, "tpm-enabled": True, "vmUniqueId": "test"},
        "user-data": pad_report_data(user_data, 64).hex().upper(),
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def _td_report(report_data: bytes) -> bytes:
    """A TDREPORT whose TD fields are those the mock quote builder writes."""
    out = bytearray(TD_REPORT_SIZE)
    out[128:192] = report_data
    out[512:520] = TD_ATTRIBUTES
    out[520:528] = XFAM
    out[528:576] = MR_TD
    return bytes(out)


def _write_hcl(tcti: str, work: Path, hcl: bytes) -> None:
    path = work / "hcl.bin"
    path.write_bytes(hcl.ljust(NV_SIZE, b"\x00"))
    _tpm(tcti, "tpm2_nvwrite", f"0x{HCL_REPORT_INDEX:08x}", "-C", "o", "-i", str(path))


def _paravisor(tcti: str, work: Path, jwk: dict[str, Any], kind: int, user_data: bytes) -> bytes:
    """Write the HCL report the paravisor would produce for ``user_data``; its runtime data."""
    runtime = _runtime_claims(jwk, user_data)
    bound = pad_report_data(hashlib.sha256(runtime).digest(), 64)
    if kind == REPORT_TYPE_TDX:
        hw = _td_report(bound)
    else:
        hw = bytes(0x50) + bound + bytes(SNP_REPORT_SIZE - 0x90)
    _write_hcl(tcti, work, build_hcl_report(hw, runtime, report_type=kind, size=NV_SIZE))
    return runtime


class _Imds(BaseHTTPRequestHandler):
    ca: MockTdxCA
    vcek_pem: str
    requests: list[tuple[str, str, dict[str, Any] | None]]

    def log_message(self, *args: Any) -> None:
        return

    def _answer(self, doc: dict[str, Any]) -> None:
        body = json.dumps(doc).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self.requests.append(("GET", self.path, None))
        if self.path != "/metadata/THIM/amd/certification" or self.headers["Metadata"] != "true":
            self.send_error(404)
            return
        self._answer({"vcekCert": self.vcek_pem, "certificateChain": ""})

    def do_POST(self) -> None:
        size = int(self.headers["Content-Length"])
        body = json.loads(self.rfile.read(size))
        self.requests.append(("POST", self.path, body))
        if self.path != "/acc/tdquote" or self.headers["Metadata"] != "true":
            self.send_error(404)
            return
        report = base64.urlsafe_b64decode(body["report"] + "=" * (-len(body["report"]) % 4))
        fields = TdFields(report_data=report[128:192], mr_td=report[528:576])
        self._answer({"quote": _b64url(build_quote(self.ca, fields))})


@pytest.fixture(scope="module")
def imds(
    tmp_path_factory: pytest.TempPathFactory, shared_vectors: Path
) -> Iterator[tuple[str, type[_Imds]]]:
    class handler(_Imds):  # noqa: N801 - one fresh handler class per module run
        pass

    handler.ca = MockTdxCA.create(tmp_path_factory.mktemp("azure-ca") / "ca")
    handler.vcek_pem = (shared_vectors / "tpm/trustee-az-snp-vtpm/vcek-genoa.pem").read_text()
    handler.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _tdx_verifier(ca: MockTdxCA) -> AzTdxVerifier:
    """The az-tdx-vtpm verifier with the mock CA as its DCAP root (tests only)."""
    store = CollateralStore(bundle=ca.collateral_path)
    return AzTdxVerifier(TdxVerifier(store, root_ca_der=pem_to_der(ca.root_pem_path.read_bytes())))


def test_tdx_attester_evidence_verifies_end_to_end(
    vtpm: tuple[str, dict[str, Any]], imds: tuple[str, type[_Imds]], tmp_path: Path
) -> None:
    tcti, jwk = vtpm
    url, handler = imds
    runtime = _paravisor(tcti, tmp_path, jwk, REPORT_TYPE_TDX, BINDING)
    evidence = TdxAttester(imds_url=url, tcti=tcti, refresh_timeout=2).evidence(BINDING)
    assert evidence["version"] == 2
    assert set(evidence) == {"version", "tpm_quote", "hcl_report", "td_quote"}
    method, path, body = handler.requests[-1]
    assert (method, path) == ("POST", "/acc/tdquote")
    assert body is not None
    assert set(body) == {"report"}

    verifier = _tdx_verifier(handler.ca)
    claims = verifier.verify(evidence, expected_report_data=BINDING, now=time.time())
    assert claims.tee == "az-tdx-vtpm"
    assert claims.report_data == BINDING
    assert claims.measurements["mr_td"] == MR_TD.hex()
    assert claims.tcb_status == "UpToDate"
    assert claims.extra["hcl"]["runtime_data_sha256"] == hashlib.sha256(runtime).hexdigest()
    pcrs = _tpm(tcti, "tpm2_pcrread", "sha256:17")
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
    _paravisor(tcti, tmp_path, jwk, REPORT_TYPE_TDX, other)
    second = TdxAttester(imds_url=url, tcti=tcti, refresh_timeout=2).evidence(other)
    spliced = {**evidence, "tpm_quote": second["tpm_quote"]}
    with pytest.raises(EvidenceError, match="user-data does not match"):
        verifier.verify(spliced, expected_report_data=other, now=time.time())


def test_snp_attester_evidence_shape_and_vtpm_half(
    vtpm: tuple[str, dict[str, Any]],
    imds: tuple[str, type[_Imds]],
    tmp_path: Path,
    shared_vectors: Path,
) -> None:
    tcti, jwk = vtpm
    url, handler = imds
    _paravisor(tcti, tmp_path, jwk, REPORT_TYPE_SNP, BINDING)
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
    vtpm: tuple[str, dict[str, Any]], imds: tuple[str, type[_Imds]], tmp_path: Path
) -> None:
    """The paravisor never took the report data: the attester refuses, it does not send
    an HCL report made for another session."""
    tcti, jwk = vtpm
    _paravisor(tcti, tmp_path, jwk, REPORT_TYPE_TDX, b"an older session")
    attester = TdxAttester(imds_url=imds[0], tcti=tcti, refresh_timeout=0.3)
    with pytest.raises(AttestationError, match="did not take the report data"):
        attester.evidence(BINDING)


def test_wrong_machine_kind_is_unsupported(
    vtpm: tuple[str, dict[str, Any]], imds: tuple[str, type[_Imds]], tmp_path: Path
) -> None:
    from modelseal.errors import UnsupportedTee

    tcti, jwk = vtpm
    _paravisor(tcti, tmp_path, jwk, REPORT_TYPE_TDX, BINDING)
    with pytest.raises(UnsupportedTee, match="az-snp-vtpm"):
        SnpAttester(imds_url=imds[0], tcti=tcti, refresh_timeout=0.3).evidence(BINDING)


def test_attest_cli_for_both_kinds(
    vtpm: tuple[str, dict[str, Any]],
    imds: tuple[str, type[_Imds]],
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
        _paravisor(tcti, tmp_path, jwk, report_type, BINDING)
        argv = ["attest", "--tee", kind, "--report-data", BINDING.hex()]
        with pytest.raises(SystemExit) as info:
            cli.main([*argv, "--azure-imds-url", imds[0]])
        out = capsys.readouterr()
        assert info.value.code == 0, out.err
        doc = json.loads(out.out)
        assert doc["version"] == 2
        assert member in doc


def test_imds_failures(
    vtpm: tuple[str, dict[str, Any]], imds: tuple[str, type[_Imds]], tmp_path: Path
) -> None:
    """IMDS unreachable: transient (exit 75); a path it does not serve: attestation error."""
    from modelseal.errors import TransientError
    from tests.conftest import free_port

    tcti, jwk = vtpm
    _paravisor(tcti, tmp_path, jwk, REPORT_TYPE_SNP, BINDING)
    down = SnpAttester(imds_url=f"http://127.0.0.1:{free_port()}", tcti=tcti, timeout=5)
    with pytest.raises(TransientError, match="Azure IMDS"):
        down.evidence(BINDING)
    wrong = SnpAttester(imds_url=imds[0] + "/elsewhere", tcti=tcti, timeout=5)
    with pytest.raises(AttestationError, match="HTTP 404"):
        wrong.evidence(BINDING)


def test_report_data_index_of_another_size_is_redefined(
    vtpm: tuple[str, dict[str, Any]], imds: tuple[str, type[_Imds]], tmp_path: Path
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
    _tpm(tcti, "tpm2_nvdefine", index, "-C", "o", "-s", "32", "-a", "ownerread|ownerwrite")
    _paravisor(tcti, tmp_path, jwk, REPORT_TYPE_TDX, BINDING)
    TdxAttester(imds_url=imds[0], tcti=tcti, refresh_timeout=2).evidence(BINDING)
    assert b"size: 64" in _tpm(tcti, "tpm2_nvreadpublic", index)
    written = tmp_path / "written.bin"
    _tpm(tcti, "tpm2_nvread", index, "-C", "o", "-o", str(written))
    assert written.read_bytes() == pad_report_data(BINDING, 64)
