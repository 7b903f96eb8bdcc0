"""Trustee's Azure vectors: the claims its own tests assert, and every tamper refused.

Byte flips change the last byte of a full-length field (a digest, a signature, a PCR,
the runtime-claims JSON) so a comparison that only looked at a prefix would be caught.
"""

from __future__ import annotations

import base64
import copy
import json
from pathlib import Path
from typing import Any

import pytest

from modelseal.errors import CollateralMissing, EvidenceError
from modelseal.tee.azure.hcl import HEADER_SIZE, VAR_DATA_OFFSET, parse_hcl_report
from modelseal.tee.registry import build_config, verifier_for
from modelseal.tee.tpm.structures import parse_attest

#: 2026-01-01: inside the validity of every VCEK and AMD certificate used here.
AT = 1767225600.0
CHALLENGE = b"challenge"
V2_NONCE = bytes.fromhex(
    "982f5c6e45df0ed3f10b6f60b02f0c8390e281300f3805e2279c16168cd6ae9a"
    "a398f647caa2338748cd0fd9f5f819ef"
)
GENOA_NONCE = bytes.fromhex(
    "0218488bae25d2509232bf676f1a66a30d7372add909109b36016ef136f2938c"
    "a05475f8b46094de6b64270ea35d950f"
)
# What Trustee's own tests assert (tpm.pcr00) for each evidence file.
PCR0_V1 = "e15c44796beabf46abcec7c57e590942041e47497e4ec27571c8b7664f48dced"
PCR0_V2 = "84275b2f4312cd4fc6cbe6b152ad3c3683e513d9f1e23c34fca160c8cca7a6a7"
PCR0_GENOA = "afd689d0bb1c5f36f023fbaf574135f555a28a10c1f6b938d2a25e70c7783338"
SNP_CASES = [
    ("evidence-v0.json", CHALLENGE, PCR0_V1),
    ("evidence-v1.json", CHALLENGE, PCR0_V1),
    ("evidence-v2.json", V2_NONCE, PCR0_V2),
    ("evidence-genoa.json", GENOA_NONCE, PCR0_GENOA),
]
TDX_PCR0 = "782b20b10f55cc46e2142cc2145d548698073e5beb82752c8d7f9279f0d8a273"
V1_MEASUREMENT = (
    "6a063be9dd79f6371c842e480f8dc3b5c725961344e57130e88c5adf49e8f7f6"
    "c79b75a5eb77fc769959f4aeb2f9401e"
)
# SNP report offsets inside the HCL report (report at 0x20).
SNP_MEASUREMENT_END = HEADER_SIZE + 0xC0
SNP_REPORT_DATA_END = HEADER_SIZE + 0x90
SNP_SIGNATURE_R_END = HEADER_SIZE + 0x2A0 + 72


def _load(vectors: Path, kind: str, name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((vectors / "tpm" / f"trustee-{kind}" / name).read_text())
    return doc


def _verify(kind: str, evidence: Any, nonce: bytes) -> Any:
    verifier = verifier_for(kind, build_config(kind, {}))
    return verifier.verify(evidence, expected_report_data=nonce, now=AT)


@pytest.mark.parametrize(("name", "nonce", "pcr0"), SNP_CASES)
def test_snp_vectors_verify_with_the_asserted_claims(
    shared_vectors: Path, name: str, nonce: bytes, pcr0: str
) -> None:
    claims = _verify("az-snp-vtpm", _load(shared_vectors, "az-snp-vtpm", name), nonce)
    assert claims.tee == "az-snp-vtpm"
    assert claims.report_data == nonce
    assert claims.measurements["pcr0"] == pcr0
    assert sorted(k for k in claims.measurements if k.startswith("pcr")) == sorted(
        f"pcr{i}" for i in range(24)
    )
    assert claims.tcb_status == "UpToDate"
    assert claims.extra["hardware"]["vmpl"] == 0
    if name in ("evidence-v0.json", "evidence-v1.json"):
        assert claims.measurements["measurement"] == V1_MEASUREMENT
        assert claims.extra["hardware"]["reported_tcb"]["raw"] == "04000000000018db"
    if name == "evidence-genoa.json":
        assert claims.extra["hardware"]["product"] == "Genoa"
        assert claims.extra["hardware"]["reported_tcb"]["raw"] == "0a00000000001754"
    hcl = claims.extra["hcl"]
    assert claims.extra["hardware"]["report_data"].startswith(hcl["runtime_data_sha256"])


def test_snp_hcl_report_and_quote_files(shared_vectors: Path) -> None:
    """hcl-report.bin + tpm-quote-v1.json + vcek.pem assembled into version-1 evidence."""
    folder = shared_vectors / "tpm" / "trustee-az-snp-vtpm"
    hcl = (folder / "hcl-report.bin").read_bytes()
    report = parse_hcl_report(hcl)
    assert report.runtime_data_sha256.hex() == (
        "b3fbad6514c83caeb0380882145e49f794229ef37c421b91fc47ff93556bafac"
    )
    assert report.user_data() == bytes(64)
    evidence = {
        "version": 1,
        "tpm_quote": json.loads((folder / "tpm-quote-v1.json").read_text()),
        "hcl_report": base64.urlsafe_b64encode(hcl).decode(),
        "vcek": base64.urlsafe_b64encode(_first_der(folder / "vcek.pem")).decode(),
    }
    claims = _verify("az-snp-vtpm", evidence, CHALLENGE)
    assert claims.measurements["pcr0"] == (
        "f3a7e99a5f819a034386bce753a48a73cfdaa0bea0ecfc124bedbf5a8c4799be"
    )
    assert claims.measurements["measurement"] == (
        "9ac48fcac8a2d88aeeff8d427ad4f2be0e3917c748a18bdf52cc317e7fe20308"
        "b459d5ef1a12e0c22944eb386d17c315"
    )
    assert claims.measurements["policy"] == f"{0x3001F:016x}"


def _first_der(pem: Path) -> bytes:
    body = pem.read_text().split("-----BEGIN CERTIFICATE-----")[1].split("-----END")[0]
    return base64.b64decode("".join(body.split()))


def _hcl_bytes(doc: dict[str, Any]) -> bytearray:
    return bytearray(base64.urlsafe_b64decode(doc["hcl_report"]))


def _with_hcl(doc: dict[str, Any], hcl: bytes) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    out["hcl_report"] = base64.urlsafe_b64encode(hcl).decode()
    return out


def _runtime_end(hcl: bytes) -> int:
    return VAR_DATA_OFFSET + len(parse_hcl_report(hcl).runtime_data)


def _flip(data: bytearray, end: int) -> bytes:
    """``data`` with the last byte of the field ending at ``end`` changed."""
    data[end - 1] ^= 0x01
    return bytes(data)


HCL_FLIPS = {
    "snp measurement": (SNP_MEASUREMENT_END, "signature is invalid"),
    "snp report data": (SNP_REPORT_DATA_END, "signature is invalid"),
    "snp signature": (SNP_SIGNATURE_R_END, "signature is invalid"),
    "hcl signature": (4, "signature 'HCLA'"),
}


@pytest.mark.parametrize("field", sorted(HCL_FLIPS))
def test_snp_hcl_flips_are_refused(shared_vectors: Path, field: str) -> None:
    doc = _load(shared_vectors, "az-snp-vtpm", "evidence-v1.json")
    end, reason = HCL_FLIPS[field]
    tampered = _with_hcl(doc, _flip(_hcl_bytes(doc), end))
    with pytest.raises(EvidenceError, match=reason):
        _verify("az-snp-vtpm", tampered, CHALLENGE)


def test_snp_runtime_claims_change_breaks_the_hardware_binding(shared_vectors: Path) -> None:
    """A changed byte inside the runtime-claims JSON that keeps it valid JSON: the last
    character of the vmUniqueId, whose digest the SNP report no longer vouches for."""
    doc = _load(shared_vectors, "az-snp-vtpm", "evidence-v1.json")
    hcl = _hcl_bytes(doc)
    runtime = bytes(hcl[VAR_DATA_OFFSET : _runtime_end(bytes(hcl))])
    at = runtime.index(b'"vmUniqueId":"') + len(b'"vmUniqueId":"') + 35
    hcl[VAR_DATA_OFFSET + at] ^= 0x01
    with pytest.raises(EvidenceError, match="runtime-claims digest does not match"):
        _verify("az-snp-vtpm", _with_hcl(doc, bytes(hcl)), CHALLENGE)


def test_snp_ak_changed_in_the_runtime_claims(shared_vectors: Path) -> None:
    """The last character of HCLAkPub's modulus: the quote no longer verifies under it."""
    doc = _load(shared_vectors, "az-snp-vtpm", "evidence-v1.json")
    hcl = _hcl_bytes(doc)
    runtime = bytes(hcl[VAR_DATA_OFFSET : _runtime_end(bytes(hcl))])
    start = runtime.index(b'"n":"') + len(b'"n":"')
    last = runtime.index(b'"', start) - 1
    hcl[VAR_DATA_OFFSET + last] = ord("A") if runtime[last] != ord("A") else ord("B")
    with pytest.raises(EvidenceError, match="signature is invalid"):
        _verify("az-snp-vtpm", _with_hcl(doc, bytes(hcl)), CHALLENGE)


def _quote_flip(doc: dict[str, Any], member: str) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    quote = out["tpm_quote"]
    if member == "pcr":
        value = bytearray.fromhex(quote["pcrs"][23])
        quote["pcrs"][23] = _flip(value, len(value)).hex()
    else:
        value = bytearray.fromhex(quote[member])
        quote[member] = _flip(value, len(value)).hex()
    return out


@pytest.mark.parametrize(
    ("kind", "member", "reason"),
    [
        ("az-snp-vtpm", "message", "signature is invalid"),
        ("az-snp-vtpm", "signature", "signature is invalid"),
        ("az-snp-vtpm", "pcr", "do not match the quoted PCR digest"),
        ("az-tdx-vtpm", "message", "signature is invalid"),
        ("az-tdx-vtpm", "signature", "signature is invalid"),
        ("az-tdx-vtpm", "pcr", "do not match the quoted PCR digest"),
    ],
)
def test_quote_flips_are_refused(shared_vectors: Path, kind: str, member: str, reason: str) -> None:
    doc = _quote_flip(_load(shared_vectors, kind, "evidence-v1.json"), member)
    with pytest.raises(EvidenceError, match=reason):
        _verify(kind, doc, CHALLENGE)


def test_wrong_nonce_is_refused(shared_vectors: Path) -> None:
    """A binding that differs in its last byte, and one longer than the quoted nonce."""
    doc = _load(shared_vectors, "az-snp-vtpm", "evidence-v2.json")
    wrong = V2_NONCE[:-1] + bytes([V2_NONCE[-1] ^ 1])
    with pytest.raises(EvidenceError, match="report data binding mismatch"):
        _verify("az-snp-vtpm", doc, wrong)
    doc = _load(shared_vectors, "az-snp-vtpm", "evidence-v1.json")
    with pytest.raises(EvidenceError, match="report data binding mismatch"):
        _verify("az-snp-vtpm", doc, b"challengf")
    with pytest.raises(EvidenceError, match="does not fit"):
        _verify("az-snp-vtpm", doc, bytes(32))


def test_v2_user_data_must_carry_the_nonce(shared_vectors: Path) -> None:
    """Trustee's version-2 check: the HCL user-data starts with the quoted nonce. The
    last hex digit of the nonce's part of user-data is changed and the vTPM half is run
    on its own (the full verifier would stop earlier, at the hardware-binding digest)."""
    from modelseal.tee.azure.evidence import parse_evidence
    from modelseal.tee.azure.hcl import REPORT_TYPE_SNP
    from modelseal.tee.azure.vtpm import verify_vtpm

    doc = _load(shared_vectors, "az-snp-vtpm", "evidence-v2.json")
    assert verify_vtpm(parse_evidence(doc, hardware="snp"), report_type=REPORT_TYPE_SNP)
    hcl = _hcl_bytes(doc)
    runtime = bytes(hcl[VAR_DATA_OFFSET : _runtime_end(bytes(hcl))])
    digit = runtime.index(b'"user-data":"') + len(b'"user-data":"') + 2 * 48 - 1
    hcl[VAR_DATA_OFFSET + digit] = ord("0") if runtime[digit] != ord("0") else ord("1")
    tampered = parse_evidence(_with_hcl(doc, bytes(hcl)), hardware="snp")
    with pytest.raises(EvidenceError, match="user-data does not match"):
        verify_vtpm(tampered, report_type=REPORT_TYPE_SNP)


@pytest.mark.parametrize("name", ["evidence-v0.json", "evidence-v1.json"])
def test_tdx_vectors_pass_every_check_before_collateral(shared_vectors: Path, name: str) -> None:
    """No public collateral covers FMSPC 00806f050000: everything the evidence itself
    proves passes (vTPM quote, HCL report, TD report == quote, binding), then the DCAP
    step asks for collateral instead of blaming the guest."""
    doc = _load(shared_vectors, "az-tdx-vtpm", name)
    with pytest.raises(CollateralMissing, match="00806f050000"):
        _verify("az-tdx-vtpm", doc, CHALLENGE)


def test_tdx_quote_file_and_pcr0(shared_vectors: Path) -> None:
    from modelseal.tee.azure.evidence import parse_evidence
    from modelseal.tee.azure.hcl import REPORT_TYPE_TDX
    from modelseal.tee.azure.vtpm import verify_vtpm

    folder = shared_vectors / "tpm" / "trustee-az-tdx-vtpm"
    ev = parse_evidence(_load(shared_vectors, "az-tdx-vtpm", "evidence-v1.json"), hardware="tdx")
    assert ev.td_quote == (folder / "td-quote.bin").read_bytes()
    assert ev.hcl_report == (folder / "hcl-report.bin").read_bytes()
    vtpm = verify_vtpm(ev, report_type=REPORT_TYPE_TDX)
    assert vtpm.quote.pcrs[0].hex() == TDX_PCR0
    assert parse_attest(ev.tpm_quote.message).extra_data == CHALLENGE
    assert vtpm.hcl.runtime_data_sha256.hex() == (
        "9734504f161d104c74e3165c15f779b06a9bb40dfa71937817d7eee68e593839"
    )


TDX_HCL_FLIPS = {
    "td report mr_td": (HEADER_SIZE + 528 + 48, "differ in mr_td"),
    "td report rtmr3": (HEADER_SIZE + 864 + 48, "differ in rtmr3"),
    "td report data": (HEADER_SIZE + 128 + 32, "differ in report_data"),
}


@pytest.mark.parametrize("field", sorted(TDX_HCL_FLIPS))
def test_tdx_hcl_flips_are_refused(shared_vectors: Path, field: str) -> None:
    doc = _load(shared_vectors, "az-tdx-vtpm", "evidence-v1.json")
    end, reason = TDX_HCL_FLIPS[field]
    with pytest.raises(EvidenceError, match=reason):
        _verify("az-tdx-vtpm", _with_hcl(doc, _flip(_hcl_bytes(doc), end)), CHALLENGE)


def test_tdx_runtime_claims_change_breaks_the_quote_binding(shared_vectors: Path) -> None:
    doc = _load(shared_vectors, "az-tdx-vtpm", "evidence-v1.json")
    hcl = _hcl_bytes(doc)
    runtime = bytes(hcl[VAR_DATA_OFFSET : _runtime_end(bytes(hcl))])
    at = runtime.index(b'"vmUniqueId":"') + len(b'"vmUniqueId":"') + 35
    hcl[VAR_DATA_OFFSET + at] ^= 0x01
    with pytest.raises(EvidenceError, match="TD quote's REPORTDATA"):
        _verify("az-tdx-vtpm", _with_hcl(doc, bytes(hcl)), CHALLENGE)


def test_tdx_quote_flip_is_refused(shared_vectors: Path) -> None:
    """The last byte of the TD quote's REPORTDATA: the HCL's TD report no longer matches."""
    doc = _load(shared_vectors, "az-tdx-vtpm", "evidence-v1.json")
    quote = bytearray(base64.urlsafe_b64decode(doc["td_quote"]))
    report_data_end = 48 + 520 + 64  # header + TD report body up to REPORTDATA's end
    tampered = copy.deepcopy(doc)
    tampered["td_quote"] = base64.urlsafe_b64encode(_flip(quote, report_data_end)).decode()
    with pytest.raises(EvidenceError, match="differ in report_data"):
        _verify("az-tdx-vtpm", tampered, CHALLENGE)


def test_kind_mismatch_is_refused(shared_vectors: Path) -> None:
    """An SNP HCL report offered as TDX evidence (and the other way) is refused."""
    snp = _load(shared_vectors, "az-snp-vtpm", "evidence-v1.json")
    snp["td_quote"] = _load(shared_vectors, "az-tdx-vtpm", "evidence-v1.json")["td_quote"]
    with pytest.raises(EvidenceError, match="report type 2"):
        _verify("az-tdx-vtpm", snp, CHALLENGE)
