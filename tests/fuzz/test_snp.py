"""Fuzz targets: AMD SEV-SNP evidence (attestation reports raw and as Trustee JSON, the
extended-report certificate table, VCEK/VLEK certificates and CRLs in the evidence), up to
the full verifier, mutating real reports and certificates."""

from __future__ import annotations

import base64
import datetime as dt
import json
import struct
import uuid
from datetime import UTC, datetime
from functools import cache
from typing import Any

import pytest

from modelseal.crypto.x509_test_ca import P256Key, issue_crl
from modelseal.errors import EvidenceError
from modelseal.tee.snp.certs import pinned
from modelseal.tee.snp.evidence import (
    CERT_GUIDS,
    CertEntry,
    build_evidence,
    parse_cert_table,
    report_bytes_from_json,
)
from modelseal.tee.snp.report import Product, parse_report
from modelseal.tee.snp.verifier import Verifier
from tests.fuzz.harness import Target, json_input, json_mutated, require, run, shared

#: inside the validity of every VCEK/VLEK of the vectors (the VLEK expires 2025-12-10)
NOW = datetime(2025, 6, 1, tzinfo=UTC).timestamp()
CHIP_ID = slice(0x1A0, 0x1E0)

#: (report, its VCEK/VLEK DER, cert_type)
PAIRS = [
    (shared("snp", d, report), shared("snp", d, key), kind)
    for d, report, key, kind in [
        ("go-sev-guest", "attestation.bin", "vcek.der", "VCEK"),
        ("trustee", "test-report.bin", "test-vcek.der", "VCEK"),
        ("trustee", "test-vlek-report.bin", "test-vlek.der", "VLEK"),
    ]
]


@cache
def _pairs() -> tuple[tuple[bytes, bytes, str], ...]:
    return tuple(
        (report.read_bytes(), key.read_bytes(), kind)
        for report, key, kind in PAIRS
        if report.is_file() and key.is_file()
    )


@cache
def _verifier() -> Verifier:
    return Verifier(max_vmpl=3)


def _reports() -> list[bytes]:
    return [r for r, _, _ in _pairs()]


def _pair_for(report: bytes) -> tuple[bytes, str]:
    """The certificate of the seed whose chip the (mutated) report names, else the first."""
    for raw, key, kind in _pairs():
        if raw[CHIP_ID] == report[CHIP_ID]:
            return key, kind
    _, key, kind = _pairs()[0]
    return key, kind


def _verify(evidence: Any) -> object:
    """The KBS's path: JSON evidence, bound to the report data the report itself carries."""
    try:
        expected = parse_report(report_bytes_from_json(evidence["attestation_report"])).report_data
    except (EvidenceError, KeyError, TypeError):  # the verifier itself judges such input
        expected = bytes(64)
    return _verifier().verify(evidence, expected_report_data=expected, now=NOW)


def _verify_report(data: bytes) -> object:
    key, kind = _pair_for(data)
    evidence = {
        "attestation_report": base64.b64encode(data).decode(),
        "cert_chain": [{"cert_type": kind, "data": list(key)}],
    }
    return _verify(evidence)


def _verify_certificate(data: bytes) -> object:
    """A real report with a fuzzed VCEK/VLEK: the pair whose certificate starts alike."""
    report, _, kind = max(_pairs(), key=lambda p: _common_prefix(p[1], data))
    evidence = build_evidence(report, [CertEntry(kind, data)])
    return _verify(json.loads(json.dumps(evidence)))


@cache
def _crls() -> tuple[bytes, ...]:
    """CRLs in the pinned Milan ARK's name (so the verifier reaches the signature check),
    signed by a test key; DER as AMD's KDS serves them."""
    ark = pinned(Product.MILAN)["ARK"]
    now = dt.datetime.fromtimestamp(NOW, dt.UTC)
    return tuple(
        issue_crl(
            issuer_key=P256Key.generate(),
            issuer_cert=ark,
            revoked_serials=serials,
            this_update=now - dt.timedelta(days=1),
            next_update=now + dt.timedelta(days=30),
        )
        for serials in ([], [1, 2**64])
    )


def _verify_crl(data: bytes) -> object:
    """The real Milan report and VCEK with a fuzzed CRL alongside."""
    report, key, kind = _pairs()[0]
    evidence = build_evidence(report, [CertEntry(kind, key), CertEntry("CRL", data)])
    return _verify(json.loads(json.dumps(evidence)))


def _common_prefix(a: bytes, b: bytes) -> int:
    return next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )


def _evidence_docs() -> list[Any]:
    return [
        json.loads(json.dumps(build_evidence(report, [CertEntry(kind, key)])))
        for report, key, kind in _pairs()
    ]


def _cert_tables() -> list[bytes]:
    """Extended-report certificate tables as the firmware lays them out."""
    guid = {name: uuid.UUID(g).bytes_le for g, name in CERT_GUIDS.items()}
    out = []
    for _, key, kind in _pairs():
        entries = [(guid[kind], key), (guid["ARK"], key[:300])]
        pos = 24 * (len(entries) + 1)
        table, blobs = b"", b""
        for g, blob in entries:
            table += g + struct.pack("<II", pos + len(blobs), len(blob))
            blobs += blob
        out.append(table + bytes(24) + blobs)
    return out


TARGETS = [
    Target("snp-report", parse_report, _reports, max_random=1_300),
    Target("snp-verify-report", _verify_report, require(_reports)),
    Target(
        "snp-verify-certificate", _verify_certificate, require(lambda: [k for _, k, _ in _pairs()])
    ),
    Target("snp-verify-crl", _verify_crl, require(lambda: _crls() if _pairs() else ())),
    Target(
        "snp-evidence-json",
        json_input(_verify),
        require(lambda: [json.dumps(d).encode() for d in _evidence_docs()]),
        extra=lambda: json_mutated(_evidence_docs()),
    ),
    Target("snp-cert-table", parse_cert_table, _cert_tables, max_random=400),
]

pytestmark = pytest.mark.fuzz


@pytest.mark.parametrize("target", TARGETS, ids=str)
def test_fuzz(target: Target) -> None:
    run(target)
