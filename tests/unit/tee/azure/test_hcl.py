"""The HCL report parser: the vectors' layout, and every unsigned byte held to the value
the paravisor writes (a changed header or padding byte is refused, not ignored)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from modelseal.errors import EvidenceError
from modelseal.tee.azure.evidence import parse_evidence
from modelseal.tee.azure.hcl import (
    IGVM_OFFSET,
    MAX_HCL_REPORT,
    REPORT_TYPE_SNP,
    REPORT_TYPE_TDX,
    VAR_DATA_OFFSET,
    build_hcl_report,
    parse_hcl_report,
)


@pytest.fixture
def snp_hcl(shared_vectors: Path) -> bytes:
    return (shared_vectors / "tpm/trustee-az-snp-vtpm/hcl-report.bin").read_bytes()


@pytest.mark.parametrize(
    ("folder", "report_type", "version", "runtime_size"),
    [
        ("trustee-az-snp-vtpm", REPORT_TYPE_SNP, 1, 1110),
        ("trustee-az-tdx-vtpm", REPORT_TYPE_TDX, 2, 1201),
    ],
)
def test_vector_layout_and_round_trip(
    shared_vectors: Path, folder: str, report_type: int, version: int, runtime_size: int
) -> None:
    raw = (shared_vectors / "tpm" / folder / "hcl-report.bin").read_bytes()
    report = parse_hcl_report(raw)
    assert (report.report_type, report.version, len(report.runtime_data)) == (
        report_type,
        version,
        runtime_size,
    )
    assert len(report.ak_spki()) == 294  # RSA-2048 SubjectPublicKeyInfo
    assert report.user_data() == bytes(64)
    assert report.vm_configuration()["secure-boot"] is True
    rebuilt = build_hcl_report(
        report.hw_report.ljust(1184, b"\x00"), report.runtime_data,
        report_type=report_type, version=version,
    )  # fmt: skip
    assert rebuilt == raw


def _patch(raw: bytes, offset: int, value: bytes) -> bytes:
    return raw[:offset] + value + raw[offset + len(value) :]


@pytest.mark.parametrize(
    ("offset", "value", "reason"),
    [
        (0, b"HCLB", "signature 'HCLA'"),
        (0x0C, struct.pack("<I", 3), "request type"),
        (0x10, struct.pack("<I", 1), "status"),
        (0x1F, b"\x01", "reserved"),
        (IGVM_OFFSET + 8, struct.pack("<I", 3), "neither SNP"),
        (IGVM_OFFSET + 12, struct.pack("<I", 2), "not SHA-256"),
        (IGVM_OFFSET, struct.pack("<I", 1131), "sizes disagree"),
        (0x08, struct.pack("<I", 2347), "sizes disagree"),
        (IGVM_OFFSET + 16, struct.pack("<I", 4000), "runs past the end"),
        (IGVM_OFFSET + 16, struct.pack("<I", 0), "empty"),
        (2599, b"\x01", "after its runtime data"),
        (VAR_DATA_OFFSET, b"[", "not UTF-8 JSON"),
    ],
)
def test_unsigned_bytes_are_held_to_their_values(
    snp_hcl: bytes, offset: int, value: bytes, reason: str
) -> None:
    with pytest.raises(EvidenceError, match=reason):
        parse_hcl_report(_patch(snp_hcl, offset, value))


def test_tdx_padding_after_the_td_report_must_be_zero(shared_vectors: Path) -> None:
    raw = (shared_vectors / "tpm/trustee-az-tdx-vtpm/hcl-report.bin").read_bytes()
    with pytest.raises(EvidenceError, match="after its TD report"):
        parse_hcl_report(_patch(raw, IGVM_OFFSET - 1, b"\x01"))


def test_sizes_are_bounded(snp_hcl: bytes) -> None:
    with pytest.raises(EvidenceError, match="bytes;"):
        parse_hcl_report(snp_hcl[: VAR_DATA_OFFSET - 1])
    with pytest.raises(EvidenceError, match="bytes;"):
        parse_hcl_report(snp_hcl.ljust(MAX_HCL_REPORT + 1, b"\x00"))


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"keys": []}, "exactly one HCLAkPub"),
        ({"keys": [{"kid": "HCLAkPub", "kty": "EC"}]}, "must be an RSA JWK"),
        ({"keys": [{"kid": "HCLAkPub", "kty": "RSA", "n": "AQAB", "e": "AQAB"}]}, "below 2048"),
        ({"keys": [{"kid": "HCLAkPub", "kty": "RSA", "n": "!!", "e": "AQAB"}]}, "base64url"),
        ({"keys": "x"}, "must be a list"),
    ],
)
def test_ak_refusals(claims: dict[str, object], reason: str) -> None:
    raw = build_hcl_report(bytes(1184), json.dumps(claims).encode(), report_type=REPORT_TYPE_SNP)
    with pytest.raises(EvidenceError, match=reason):
        parse_hcl_report(raw).ak_spki()


def test_deep_or_odd_runtime_claims_are_refused() -> None:
    deep = b'{"a":' * 20 + b"1" + b"}" * 20
    with pytest.raises(EvidenceError, match="shallow JSON object"):
        parse_hcl_report(build_hcl_report(bytes(1184), deep, report_type=REPORT_TYPE_SNP))
    odd = build_hcl_report(bytes(1184), b'{"user-data":"zz"}', report_type=REPORT_TYPE_SNP)
    with pytest.raises(EvidenceError, match="user-data"):
        parse_hcl_report(odd).user_data()


@pytest.mark.parametrize(
    "doc",
    [
        {"version": 1, "tpm_quote": {"signature": "00", "message": "00", "pcrs": ["00"] * 24}},
        {"version": 1, "tpm_quote": {"signature": "zz", "message": "00", "pcrs": []}},
        {"version": True},
        {"quote": {"signature": [300], "message": [1], "pcrs": [[0] * 32] * 24}},
        {"version": 2, "tpm_quote": {"signature": "00" * 600, "message": "00", "pcrs": []}},
    ],
)
def test_evidence_shape_refusals(doc: dict[str, object]) -> None:
    with pytest.raises(EvidenceError):
        parse_evidence(doc, hardware="snp")
