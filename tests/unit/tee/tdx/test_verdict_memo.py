"""The remembered DCAP verdict: a quote of a known template pays only its own signature.

A memo that accepted a quote it should refuse would be a hole, so every way a quote can
differ from the remembered one is tried: its signature (last byte), the TD, the
collateral, the moment. ``dcap.verify`` is counted to tell the memo from a full check.
"""

from __future__ import annotations

import base64
import dataclasses
import struct
import time
from pathlib import Path
from typing import Any

import pytest

from modelseal.crypto.x509_test_ca import pem_to_der
from modelseal.errors import EvidenceError
from modelseal.tee.mock_tdx.attester import Attester
from modelseal.tee.mock_tdx.ca import MockTdxCA
from modelseal.tee.mock_tdx.quote_builder import qe_certification
from modelseal.tee.mock_tdx.verifier import Verifier as MockVerifier
from modelseal.tee.tdx import dcap, dcap_verifier
from modelseal.tee.tdx.collateral import CollateralStore
from modelseal.tee.tdx.dcap_verifier import VERDICT_WINDOW
from modelseal.tee.tdx.quote import parse_quote, verdict_template

NOW = time.time()
DATA_A = b"\x0a" * 64
DATA_B = b"\x0b" * 64


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> MockTdxCA:
    return MockTdxCA.create(tmp_path_factory.mktemp("memo") / "ca")


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The moments dcap-qvl was asked about, in order."""
    seen: list[float] = []
    real = dcap.verify

    def counting(raw: bytes, collateral: Any, now: float, **kw: Any) -> dcap.DcapResult:
        seen.append(now)
        return real(raw, collateral, now, **kw)

    monkeypatch.setattr(dcap, "verify", counting)
    return seen


def _verifier(ca: MockTdxCA) -> MockVerifier:
    store = CollateralStore(bundle=ca.collateral_path)
    return MockVerifier(store, root_ca_der=pem_to_der(ca.root_pem_path.read_bytes()))


def _with_quote(evidence: dict[str, Any], change: Any) -> dict[str, Any]:
    raw = bytearray(base64.b64decode(evidence["quote"]))
    change(raw, parse_quote(bytes(raw)))
    return {**evidence, "quote": base64.b64encode(bytes(raw)).decode()}


def test_a_second_quote_of_the_same_td_reuses_the_verdict(
    ca: MockTdxCA, calls: list[float]
) -> None:
    verifier, td = _verifier(ca), Attester(ca.directory)
    first = verifier.verify(td.evidence(DATA_A), expected_report_data=DATA_A, now=NOW)
    assert calls == [NOW, NOW + VERDICT_WINDOW]  # verified, and its window checked
    second = verifier.verify(td.evidence(DATA_B), expected_report_data=DATA_B, now=NOW + 1)
    assert calls == [NOW, NOW + VERDICT_WINDOW]  # from the memo
    assert second.report_data == DATA_B
    assert (second.tcb_status, second.measurements) == (first.tcb_status, first.measurements)


def test_a_quote_signature_differing_in_its_last_byte_is_refused_from_the_memo(
    ca: MockTdxCA, calls: list[float]
) -> None:
    verifier, td = _verifier(ca), Attester(ca.directory)
    verifier.verify(td.evidence(DATA_A), expected_report_data=DATA_A, now=NOW)
    known = len(calls)

    def flip_signature(raw: bytearray, quote: Any) -> None:
        raw[quote.signed_length + 4 + 63] ^= 0x01  # the ECDSA signature's last byte

    forged = _with_quote(td.evidence(DATA_B), flip_signature)
    with pytest.raises(EvidenceError, match="signature is invalid"):
        verifier.verify(forged, expected_report_data=DATA_B, now=NOW)
    assert len(calls) == known  # refused by the memo's own check, not by dcap-qvl

    def flip_report_data(raw: bytearray, quote: Any) -> None:
        raw[48 + 520 + 63] ^= 0x01  # REPORTDATA's last byte, signature left as it was

    changed = _with_quote(td.evidence(DATA_B), flip_report_data)
    with pytest.raises(EvidenceError, match="signature is invalid"):
        verifier.verify(changed, expected_report_data=DATA_B[:-1] + b"\x0a", now=NOW)


def test_another_td_is_verified_in_full(ca: MockTdxCA, calls: list[float]) -> None:
    verifier = _verifier(ca)
    verifier.verify(Attester(ca.directory).evidence(DATA_A), expected_report_data=DATA_A, now=NOW)
    known = len(calls)
    other_mr_td = "00" * 47 + "01"
    other = Attester(ca.directory, measurements={"mr_td": other_mr_td})
    claims = verifier.verify(other.evidence(DATA_A), expected_report_data=DATA_A, now=NOW)
    assert claims.measurements["mr_td"] == other_mr_td
    assert len(calls) == known + 2

    def flip_mr_td(raw: bytearray, quote: Any) -> None:
        raw[48 + 136 + 47] ^= 0x01  # MRTD's last byte: a template never seen

    forged = _with_quote(other.evidence(DATA_B), flip_mr_td)
    with pytest.raises(EvidenceError):
        verifier.verify(forged, expected_report_data=DATA_B, now=NOW)
    assert len(calls) == known + 3  # dcap-qvl was asked, and refused


def test_the_verdict_serves_its_window_only(ca: MockTdxCA, calls: list[float]) -> None:
    verifier, td = _verifier(ca), Attester(ca.directory)
    verifier.verify(td.evidence(DATA_A), expected_report_data=DATA_A, now=NOW)
    for moment in (NOW + VERDICT_WINDOW + 1, NOW - 1):
        known = len(calls)
        verifier.verify(td.evidence(DATA_B), expected_report_data=DATA_B, now=moment)
        assert calls[known] == moment  # verified in full at that moment


@pytest.mark.parametrize("moment", [float("nan"), float("inf"), -1.0])
def test_a_time_no_window_holds_is_refused_before_and_after_a_verdict_is_remembered(
    ca: MockTdxCA, moment: float
) -> None:
    verifier, td = _verifier(ca), Attester(ca.directory)
    with pytest.raises(EvidenceError, match="verification time"):
        verifier.verify(td.evidence(DATA_A), expected_report_data=DATA_A, now=moment)
    verifier.verify(td.evidence(DATA_A), expected_report_data=DATA_A, now=NOW)
    with pytest.raises(EvidenceError, match="verification time"):
        verifier.verify(td.evidence(DATA_B), expected_report_data=DATA_B, now=moment)


def test_the_least_recently_used_verdict_is_forgotten_first(
    ca: MockTdxCA, calls: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dcap_verifier, "VERDICTS_MAX", 2)
    verifier = _verifier(ca)
    busy, once, other = (
        Attester(ca.directory, measurements={"mr_td": "00" * 47 + f"{n:02x}"}) for n in (1, 2, 3)
    )
    for td in (busy, once, busy, other):  # busy is used again before other arrives
        verifier.verify(td.evidence(DATA_A), expected_report_data=DATA_A, now=NOW)
    assert len(calls) == 6  # three templates verified in full (twice each), one hit
    verifier.verify(busy.evidence(DATA_B), expected_report_data=DATA_B, now=NOW)
    assert len(calls) == 6  # still remembered
    verifier.verify(once.evidence(DATA_B), expected_report_data=DATA_B, now=NOW)
    assert len(calls) == 8  # forgotten: verified in full again


def test_collateral_expiring_within_the_window_is_never_remembered(
    tmp_path: Path, calls: list[float]
) -> None:
    ca = MockTdxCA.create(tmp_path / "ca")
    ca.write_collateral(now=NOW + 300 + 3600 - 86400, days=1)  # valid until NOW + 300
    verifier, td = _verifier(ca), Attester(ca.directory)
    verifier.verify(td.evidence(DATA_A), expected_report_data=DATA_A, now=NOW)
    verifier.verify(td.evidence(DATA_B), expected_report_data=DATA_B, now=NOW + 1)
    assert calls == [NOW, NOW + VERDICT_WINDOW, NOW + 1, NOW + 1 + VERDICT_WINDOW]
    with pytest.raises(EvidenceError):
        verifier.verify(td.evidence(DATA_A), expected_report_data=DATA_A, now=NOW + 400)


def test_the_template_leaves_out_exactly_report_data_and_signature(ca: MockTdxCA) -> None:
    td = Attester(ca.directory)
    for version in (4, 5):
        td.quote_version = version
        a, b = parse_quote(td.quote(DATA_A)), parse_quote(td.quote(DATA_B))
        assert a.raw != b.raw
        assert verdict_template(a) == verdict_template(b) is not None
        template = verdict_template(a)
        assert template is not None
        assert len(template) == len(a.raw) - 128


@pytest.mark.parametrize(
    ("version", "tee_type", "body_type", "body_len", "report_data_at"),
    [
        (3, 0x00, None, 384, 320),  # SGX
        (4, 0x00, None, 384, 320),  # SGX
        (4, 0x81, None, 584, 520),  # TDX 1.0
        (5, 0x00, 1, 384, 320),  # SGX
        (5, 0x81, 2, 584, 520),  # TDX 1.0
        (5, 0x81, 3, 648, 520),  # TDX 1.5
    ],
)
def test_the_template_finds_report_data_in_every_body_layout(
    ca: MockTdxCA,
    version: int,
    tee_type: int,
    body_type: int | None,
    body_len: int,
    report_data_at: int,
) -> None:
    """Quotes laid out by hand (signatures are not checked by the template): two quotes
    that differ only in REPORTDATA and signature share a template, one that differs in
    the body byte just before REPORTDATA does not."""
    cert6 = qe_certification(ca)
    header = struct.pack("<HHIHH", version, 2, tee_type, 0, 0) + bytes(36)

    def quote(report_data: bytes, signature: bytes, before: int = 0x5A) -> Any:
        body = bytearray([0x5A]) * body_len
        body[report_data_at - 1] = before
        body[report_data_at : report_data_at + 64] = report_data
        if body_type is not None:
            body[:0] = struct.pack("<HI", body_type, body_len)
        key = ca.attestation_key.public_point()
        tail = cert6 if version == 3 else struct.pack("<HI", 6, len(cert6)) + cert6
        sig_data = signature + key + tail
        return parse_quote(header + bytes(body) + struct.pack("<I", len(sig_data)) + sig_data)

    a = quote(DATA_A, b"\x01" * 64)
    b = quote(DATA_B, b"\x02" * 64)
    assert a.report.report_data == DATA_A
    assert b.report.report_data == DATA_B
    assert verdict_template(a) == verdict_template(b) is not None
    assert len(verdict_template(a) or b"") == len(a.raw) - 128
    assert verdict_template(quote(DATA_A, b"\x01" * 64, before=0x5B)) != verdict_template(a)


def test_a_verdict_that_changes_within_the_window_is_never_remembered(
    ca: MockTdxCA, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A verdict that differs at the window's end (say an advisory appears) is verified
    every time: each quote gets the verdict of its own moment, never a remembered one."""
    seen: list[float] = []
    real = dcap.verify

    def changing(raw: bytes, collateral: Any, now: float, **kw: Any) -> dcap.DcapResult:
        seen.append(now)
        result = real(raw, collateral, now, **kw)
        if now >= NOW + VERDICT_WINDOW:
            return dataclasses.replace(result, advisory_ids=(*result.advisory_ids, "INTEL-SA-1"))
        return result

    monkeypatch.setattr(dcap, "verify", changing)
    verifier, td = _verifier(ca), Attester(ca.directory)
    first = verifier.verify(td.evidence(DATA_A), expected_report_data=DATA_A, now=NOW)
    second = verifier.verify(td.evidence(DATA_B), expected_report_data=DATA_B, now=NOW + 1)
    assert seen == [NOW, NOW + VERDICT_WINDOW, NOW + 1, NOW + 1 + VERDICT_WINDOW]
    assert "INTEL-SA-1" not in first.advisories
    assert "INTEL-SA-1" not in second.advisories
