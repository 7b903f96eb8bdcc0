"""A simulated Azure CVM for tests: swtpm as the vTPM, a paravisor, a loopback IMDS.

The software TPM plays the Azure vTPM: an RSA AK persisted at 0x81000003 and an HCL
report written to NV index 0x01400001 whose runtime claims name that AK and carry the
session's report data as user-data (what the paravisor writes after the guest sets NV
0x01400002). A loopback HTTP server plays the instance metadata service: for TDX it
turns the TDREPORT it is sent into a TD quote signed by the mock-tdx test CA; for
SEV-SNP it serves a real VCEK (no test key can sign an SNP report).
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from modelseal.crypto.x509_pem import pem_to_der
from modelseal.tee.az_tdx_vtpm.verifier import Verifier as AzTdxVerifier
from modelseal.tee.azure.attester import AK_HANDLE, HCL_REPORT_INDEX
from modelseal.tee.azure.hcl import (
    REPORT_TYPE_TDX,
    SNP_REPORT_SIZE,
    TD_REPORT_SIZE,
    build_hcl_report,
)
from modelseal.tee.base import pad_report_data
from modelseal.tee.mock_tdx.ca import MockTdxCA
from modelseal.tee.mock_tdx.quote_builder import TD_ATTRIBUTES, XFAM, TdFields, build_quote
from modelseal.tee.tdx.collateral import CollateralStore
from modelseal.tee.tdx.verifier import Verifier as TdxVerifier
from modelseal.tee.tpm.structures import parse_public
from tests.conftest import ATTESTATION_VECTORS
from tests.unit.tee.tpm.swtpm import running_swtpm

BINDING = hashlib.sha384(b"azure runtime data").digest()
MR_TD = hashlib.sha384(b"azure td image").digest()
AK_ATTRIBUTES = "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|restricted|sign"
#: Azure's HCL index holds 2600 bytes; libtpms caps an NV index at 2048 (TPM2_PT_NV_INDEX_MAX),
#: enough for a runtime-claims JSON with one key.
NV_SIZE = 2048


def tpm(tcti: str, *args: str) -> bytes:
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
        tpm(tcti, "tpm2_createprimary", "-C", "o", "-G", "rsa2048:rsassa-sha256:null",
             "-g", "sha256", "-a", AK_ATTRIBUTES, "-c", str(ctx), "-Q")  # fmt: skip
        tpm(tcti, "tpm2_evictcontrol", "-C", "o", "-c", str(ctx), f"0x{AK_HANDLE:08x}", "-Q")
        tpm(tcti, "tpm2_flushcontext", "-t")
        tpm(tcti, "tpm2_readpublic", "-c", f"0x{AK_HANDLE:08x}", "-o", str(pub), "-Q")
        public = parse_public(pub.read_bytes())
        tpm(tcti, "tpm2_nvdefine", f"0x{HCL_REPORT_INDEX:08x}", "-C", "o",
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
    tpm(tcti, "tpm2_nvwrite", f"0x{HCL_REPORT_INDEX:08x}", "-C", "o", "-i", str(path))


def paravisor(tcti: str, work: Path, jwk: dict[str, Any], kind: int, user_data: bytes) -> bytes:
    """Write the HCL report the paravisor would produce for ``user_data``; its runtime data."""
    runtime = _runtime_claims(jwk, user_data)
    bound = pad_report_data(hashlib.sha256(runtime).digest(), 64)
    if kind == REPORT_TYPE_TDX:
        hw = _td_report(bound)
    else:
        hw = bytes(0x50) + bound + bytes(SNP_REPORT_SIZE - 0x90)
    _write_hcl(tcti, work, build_hcl_report(hw, runtime, report_type=kind, size=NV_SIZE))
    return runtime


class Imds(BaseHTTPRequestHandler):
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
def imds(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, type[Imds]]]:
    class handler(Imds):  # noqa: N801 - one fresh handler class per module run
        pass

    handler.ca = MockTdxCA.create(tmp_path_factory.mktemp("azure-ca") / "ca")
    handler.vcek_pem = (ATTESTATION_VECTORS / "tpm/trustee-az-snp-vtpm/vcek-genoa.pem").read_text()
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


def tdx_verifier(ca: MockTdxCA) -> AzTdxVerifier:
    """The az-tdx-vtpm verifier with the mock CA as its DCAP root (tests only)."""
    store = CollateralStore(bundle=ca.collateral_path)
    return AzTdxVerifier(TdxVerifier(store, root_ca_der=pem_to_der(ca.root_pem_path.read_bytes())))
