"""Every TDX/SGX vector in tests/vectors/attestation: fields, verdicts, reasons, mutations."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from modelseal._internal.encoding import hex_decode
from modelseal.errors import BackendError, EvidenceError
from modelseal.tee.tdx import dcap
from modelseal.tee.tdx.config import SgxConfig, TdxConfig
from modelseal.tee.tdx.evidence import decode_evidence
from modelseal.tee.tdx.quote import EnclaveReport, TdReport, parse_quote
from modelseal.tee.tdx.sgx.verifier import Verifier as SgxVerifier
from modelseal.tee.tdx.verifier import Verifier as TdxVerifier

#: dcap-qvl error text -> the reason our verifier must report (category prefix)
REASONS = {
    "No matching TCB level found": "TCB level not supported by the collateral",
    "Debug mode is enabled": "debug TEE",
}


def _expected(vectors: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((vectors / "expected.json").read_text())
    return data


def _quote_bytes(vectors: Path, rel: str) -> bytes:
    raw = (vectors / rel).read_bytes()
    return hex_decode(raw.decode()) if rel.endswith(".hex") else raw


def _verifier(vectors: Path, rel_quote: str, collateral: str) -> Any:
    cls = SgxVerifier if rel_quote.startswith("sgx/") else TdxVerifier
    return cls.from_config(
        (SgxConfig if cls.tee == "sgx" else TdxConfig)(collateral=str(vectors / collateral))
    )


def test_quote_fields_match_expected(shared_vectors: Path) -> None:
    fields = _expected(shared_vectors)["quote_fields"]
    assert len(fields) >= 14
    for rel, exp in fields.items():
        quote = parse_quote(_quote_bytes(shared_vectors, rel))
        assert quote.header.version == exp["version"], rel
        assert f"0x{quote.header.tee_type:x}" == exp["tee_type"], rel
        assert quote.signature.qe_report.isv_svn == exp["qe_isvsvn"], rel
        if "body_type" in exp:
            assert quote.body_type == exp["body_type"], rel
        report = quote.report
        names = {"mr_servicetd": "mr_service_td"}
        for key, value in exp.items():
            attr = names.get(key, key)
            if isinstance(value, str) and hasattr(report, attr):
                got = getattr(report, attr)
                assert isinstance(got, bytes)
                assert got.hex() == value, (rel, key)
        if isinstance(report, TdReport):
            assert report.debug == bool(bytes.fromhex(exp["td_attributes"])[0] & 1)
        else:
            assert isinstance(report, EnclaveReport)
            assert report.isv_prod_id == int(exp["isv_prod_id"])
        pck = dcap.pck_info(quote.signature.pck_chain_pem)
        assert pck.fmspc == exp["fmspc"], rel
        assert pck.ca == exp["pck_ca"], rel
        assert pck.cpu_svn == exp["pck_cpusvn"], rel
        assert pck.pce_svn == exp["pck_pcesvn"], rel


def test_dcap_verdicts_reproduced(shared_vectors: Path) -> None:
    cases = _expected(shared_vectors)["dcap_qvl_verify"]
    assert len(cases) >= 9
    for case in cases:
        raw = _quote_bytes(shared_vectors, case["quote"])
        verifier = _verifier(shared_vectors, case["quote"], case["collateral"])
        report_data = parse_quote(raw).report.report_data
        for now, result in case["results"].items():
            if "status" in result:
                claims = verifier.verify(raw, expected_report_data=report_data, now=float(now))
                assert claims.tcb_status == result["status"], case["quote"]
                assert list(claims.advisories) == result["advisory_ids"], case["quote"]
                assert claims.report_data == report_data
                assert claims.debug is False
            else:
                detail = result["error"].removeprefix("Verification failed: ")
                with pytest.raises(EvidenceError) as err:
                    verifier.verify(raw, expected_report_data=report_data, now=float(now))
                assert detail in str(err.value), case["quote"]
                assert str(err.value).startswith(REASONS[detail]), str(err.value)


def test_positive_vector_claims(shared_vectors: Path) -> None:
    exp = _expected(shared_vectors)["quote_fields"]["tdx/dcap-qvl/tdx_quote"]
    raw = (shared_vectors / "tdx/dcap-qvl/tdx_quote").read_bytes()
    verifier = TdxVerifier.from_config(TdxConfig(collateral=str(shared_vectors / "tdx")))
    evidence = decode_evidence(raw).to_json()  # Trustee JSON shape
    claims = verifier.verify(
        evidence, expected_report_data=bytes.fromhex(exp["report_data"]), now=1752919234
    )
    assert claims.tee == "tdx"
    for name in ("mr_td", "rtmr0", "rtmr1", "rtmr2", "rtmr3", "mr_seam", "mr_signer_seam"):
        assert claims.measurements[name] == exp[name]
    assert claims.extra["td_attributes"]["sept_ve_disable"] is True
    assert claims.extra["xfam"] == exp["xfam"]
    assert claims.extra["tee_tcb_svn"] == exp["tee_tcb_svn"]
    assert claims.extra["fmspc"] == "b0c06f000000"


def test_window_edges(shared_vectors: Path) -> None:
    raw = (shared_vectors / "tdx/dcap-qvl/tdx_quote").read_bytes()
    verifier = _verifier(shared_vectors, "tdx/", "tdx/dcap-qvl/tdx_quote_collateral.json")
    rd = parse_quote(raw).report.report_data
    with pytest.raises(EvidenceError, match=r"^collateral not yet valid"):
        verifier.verify(raw, expected_report_data=rd, now=1750329146)
    with pytest.raises(EvidenceError, match=r"^collateral expired"):
        verifier.verify(raw, expected_report_data=rd, now=1752919235)


def test_binding_mismatch_rejected(shared_vectors: Path) -> None:
    raw = (shared_vectors / "tdx/dcap-qvl/tdx_quote").read_bytes()
    verifier = _verifier(shared_vectors, "tdx/", "tdx/dcap-qvl/tdx_quote_collateral.json")
    with pytest.raises(EvidenceError, match="report data binding mismatch"):
        verifier.verify(raw, expected_report_data=b"\x00" * 48, now=1752919234)


def test_sgx_quote_rejected_by_tdx_verifier(shared_vectors: Path) -> None:
    raw = (shared_vectors / "sgx/dcap-qvl/sgx_quote").read_bytes()
    verifier = _verifier(shared_vectors, "tdx/", "sgx/dcap-qvl/sgx_quote_collateral.json")
    with pytest.raises(EvidenceError, match="another TEE type"):
        verifier.verify(raw, expected_report_data=b"", now=1752919277)


def test_non_production_root_rejected(shared_vectors: Path) -> None:
    """evidence-api/quote.bin: valid signatures, PCK chain under a pre-production root."""
    raw = (shared_vectors / "eventlog/evidence-api/quote.bin").read_bytes()
    verifier = _verifier(shared_vectors, "tdx/", "tdx/dcap-qvl/tdx_quote_collateral.json")
    with pytest.raises(EvidenceError, match=r"^certificate chain broken"):
        verifier.verify(
            raw, expected_report_data=parse_quote(raw).report.report_data, now=1752919234
        )


def test_missing_collateral_is_backend_error(shared_vectors: Path) -> None:
    """tdx_quote_6.dat: no CRLs for its FMSPC are available -> 503-style BackendError."""
    raw = (shared_vectors / "tdx/trustee/tdx_quote_6.dat").read_bytes()
    verifier = TdxVerifier.from_config(TdxConfig(collateral=str(shared_vectors / "tdx")))
    with pytest.raises(BackendError, match="no DCAP collateral for TDX FMSPC 00a06d080000"):
        verifier.verify(raw, expected_report_data=b"", now=1763000000)


def test_debug_sgx_enclave_parsed(shared_vectors: Path) -> None:
    quote = parse_quote((shared_vectors / "sgx/trustee/occlum_quote.dat").read_bytes())
    assert quote.enclave_report.debug is True
    assert quote.enclave_report.report_data.rstrip(b"\x00") == b"test"


def _flip(data: bytes, pos: int) -> bytes:
    return data[:pos] + bytes([data[pos] ^ 0x01]) + data[pos + 1 :]


def test_mutating_signed_quote_bytes_rejected(shared_vectors: Path) -> None:
    raw = (shared_vectors / "tdx/dcap-qvl/tdx_quote").read_bytes()
    quote = parse_quote(raw)
    verifier = _verifier(shared_vectors, "tdx/", "tdx/dcap-qvl/tdx_quote_collateral.json")
    rd = quote.report.report_data
    # every 23rd byte of the whole quote, plus the header/body fields' first bytes
    positions = sorted(
        set(range(0, len(quote.raw), 23)) | {0, 2, 4, 8, 10, 12, 28, 47, 631, len(quote.raw) - 1}
    )
    for pos in positions:
        with pytest.raises(EvidenceError):
            verifier.verify(_flip(raw, pos), expected_report_data=rd, now=1752919234)


def test_mutating_collateral_rejected(shared_vectors: Path, tmp_path: Path) -> None:
    raw = (shared_vectors / "tdx/dcap-qvl/tdx_quote").read_bytes()
    rd = parse_quote(raw).report.report_data
    doc = json.loads((shared_vectors / "tdx/dcap-qvl/tdx_quote_collateral.json").read_text())

    def mutated(key: str, pos: int) -> dict[str, Any]:
        out = dict(doc)
        value = out[key]
        if key in ("root_ca_crl", "pck_crl", "tcb_info_signature", "qe_identity_signature"):
            blob = bytes.fromhex(value)
            out[key] = _flip(blob, pos % len(blob)).hex()
        else:  # change a digit, so the JSON/PEM stays well-formed and only the bytes differ
            text = value
            i = pos % len(text)
            while not text[i].isdigit():
                i += 1
            repl = "7" if text[i] != "7" else "8"
            out[key] = text[:i] + repl + text[i + 1 :]
        return out

    cases = [
        ("tcb_info", 40),
        ("tcb_info_issuer_chain", 300),
        ("pck_crl_issuer_chain", 500),
        ("qe_identity_issuer_chain", 900),
        ("tcb_info", 700),
        ("qe_identity", 130),
        ("tcb_info_signature", 5),
        ("qe_identity_signature", 40),
        ("pck_crl", 200),
        ("root_ca_crl", 150),
        ("pck_crl", -10),
    ]
    for key, pos in cases:
        path = tmp_path / f"{key}-{pos}.json"
        path.write_text(json.dumps(mutated(key, pos)))
        verifier = TdxVerifier.from_config(TdxConfig(collateral=str(path)))
        with pytest.raises(EvidenceError):
            verifier.verify(raw, expected_report_data=rd, now=1752919234)
