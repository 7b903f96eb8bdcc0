"""SNP parsers: strict layout, Trustee JSON round trip, and no crash on arbitrary input."""

from __future__ import annotations

import base64
import contextlib
import json
import struct
import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelseal.errors import EvidenceError
from modelseal.tee.snp import certs as amd
from modelseal.tee.snp.evidence import (
    CertEntry,
    cert_chain_from_json,
    cert_chain_to_json,
    parse_cert_table,
    report_bytes_from_json,
    report_to_json,
)
from modelseal.tee.snp.report import REPORT_SIZE, Product, TcbVersion, parse_report
from modelseal.tee.snp.verifier import Verifier


def _synthetic(version: int = 3, *, fam: int = 0x19, mod: int = 0x11) -> bytes:
    """A structurally valid (unsigned) report: enough for parser tests."""
    raw = bytearray(REPORT_SIZE)
    struct.pack_into("<IIQ", raw, 0, version, 7, 0x30000)
    struct.pack_into("<II", raw, 0x30, 0, 1)
    raw[0x38:0x40] = bytes([3, 0, 0, 0, 0, 0, 8, 0x73])
    raw[0x50:0x90] = bytes(range(64))
    raw[0x90:0xC0] = b"\xab" * 48
    raw[0x180:0x188] = bytes([3, 0, 0, 0, 0, 0, 8, 0x73])
    if version >= 3:
        raw[0x188:0x18B] = bytes([fam, mod, 1])
    raw[0x1A0:0x1E0] = b"\x11" * 64
    raw[0x1E0:0x1E8] = bytes([3, 0, 0, 0, 0, 0, 8, 0x73])
    raw[0x1E8:0x1EB] = bytes([29, 55, 1])
    raw[0x1EC:0x1EF] = bytes([29, 55, 1])
    raw[0x1F0:0x1F8] = bytes([3, 0, 0, 0, 0, 0, 8, 0x73])
    if version >= 5:
        struct.pack_into("<QQ", raw, 0x1F8, 5, 6)
    raw[0x2A0:0x2E8] = b"\x01" * 48 + bytes(24)
    raw[0x2E8:0x330] = b"\x02" * 48 + bytes(24)
    return bytes(raw)


@pytest.mark.parametrize("version", [2, 3, 5])
def test_json_round_trip_is_byte_exact(version: int) -> None:
    raw = _synthetic(version)
    report = parse_report(raw)
    doc = json.loads(json.dumps(report_to_json(report)))
    assert report_bytes_from_json(doc) == raw
    if version >= 5:
        assert report.launch_mit_vector == 5
        assert report.current_mit_vector == 6
    else:
        assert "launch_mit_vector" in doc
        assert doc["launch_mit_vector"] is None


def test_turin_tcb_layout_round_trips() -> None:
    raw = bytearray(_synthetic(3, fam=0x1A, mod=0x02))
    for off in (0x38, 0x180, 0x1E0, 0x1F0):
        raw[off : off + 8] = bytes([5, 3, 1, 8, 0, 0, 0, 0x15])
    report = parse_report(bytes(raw))
    assert report.product is Product.TURIN
    assert report.reported_tcb == TcbVersion(3, 1, 8, 0x15, fmc=5, raw=bytes(raw[0x180:0x188]))
    assert report_bytes_from_json(report_to_json(report)) == bytes(raw)


def test_product_detection() -> None:
    assert parse_report(_synthetic(3, fam=0x19, mod=0x01)).product is Product.MILAN
    assert parse_report(_synthetic(3, fam=0x19, mod=0x11)).product is Product.GENOA
    assert parse_report(_synthetic(3, fam=0x19, mod=0xA0)).product is Product.GENOA
    with pytest.raises(EvidenceError, match="unsupported CPU family"):
        parse_report(_synthetic(3, fam=0x17, mod=0x31))
    with pytest.raises(EvidenceError, match="certificates are for"):
        parse_report(_synthetic(3, fam=0x19, mod=0x01), product=Product.GENOA)


@pytest.mark.parametrize(
    ("offset", "value", "reason"),
    [
        (0x00, b"\x04\x00\x00\x06", "version"),  # version 0x06000004
        (0x00, b"\x01\x00\x00\x00", "version 1"),
        (0x34, b"\x02\x00\x00\x00", "signature algorithm"),
        (0x30, b"\x04\x00\x00\x00", "VMPL"),
        (0x4C, b"\x01", "reserved"),
        (0x190, b"\x01", "reserved"),
        (0x210, b"\x01", "reserved"),
        (0x400, b"\x01", "reserved"),
        (0x48, b"\x20", "flag"),
        (0x48, b"\x18", "SIGNING_KEY"),
    ],
)
def test_strict_fields(offset: int, value: bytes, reason: str) -> None:
    raw = bytearray(_synthetic(3))
    raw[offset : offset + len(value)] = value
    with pytest.raises(EvidenceError, match=reason):
        parse_report(bytes(raw))


def test_wrong_size_and_type() -> None:
    with pytest.raises(EvidenceError, match="1184"):
        parse_report(_synthetic()[:-1])
    with pytest.raises(EvidenceError, match="bytes"):
        parse_report("x" * REPORT_SIZE)  # type: ignore[arg-type]


def test_json_rejects_bad_members() -> None:
    doc = report_to_json(parse_report(_synthetic(3)))
    for key, bad in (
        ("measurement", [0] * 47),
        ("measurement", [256] * 48),
        ("measurement", "00" * 48),
        ("policy", -1),
        ("policy", True),
        ("signature", None),
        ("current_tcb", {"bootloader": 1}),
        ("launch_mit_vector", 3),
    ):
        with pytest.raises(EvidenceError):
            report_bytes_from_json({**doc, key: bad})
    v2 = report_to_json(parse_report(_synthetic(2)))
    with pytest.raises(EvidenceError, match="CPUID"):
        report_bytes_from_json({**v2, "cpuid_fam_id": 25})
    with pytest.raises(EvidenceError, match="fmc"):
        report_bytes_from_json({**v2, "reported_tcb": {**v2["reported_tcb"], "fmc": 1}})


def test_base64_report_form() -> None:
    import base64

    raw = _synthetic(3)
    assert report_bytes_from_json(base64.b64encode(raw).decode()) == raw
    with pytest.raises(EvidenceError):
        report_bytes_from_json(base64.b64encode(raw[:-4]).decode())
    with pytest.raises(EvidenceError):
        report_bytes_from_json("not base64!")


def _table(entries: list[tuple[str, bytes]]) -> bytes:
    header = bytearray()
    body = bytearray()
    start = 24 * (len(entries) + 1)
    for guid, data in entries:
        header += uuid.UUID(guid).bytes_le + struct.pack("<II", start + len(body), len(data))
        body += data
    return bytes(header + bytes(24) + body)


def test_cert_table_parsing() -> None:
    table = _table(
        [
            ("63da758d-e664-4564-adc5-f4b93be8accd", b"vcek-der"),
            ("4ab7b379-bbac-4fe4-a02f-05aef327c782", b"ask-der"),
            ("11111111-2222-3333-4444-555555555555", b"other"),
        ]
    )
    entries = parse_cert_table(table + bytes(100))
    assert entries == [
        CertEntry("VCEK", b"vcek-der"),
        CertEntry("ASK", b"ask-der"),
        CertEntry("11111111-2222-3333-4444-555555555555", b"other"),
    ]
    assert cert_chain_from_json(json.loads(json.dumps(cert_chain_to_json(entries)))) == entries
    with pytest.raises(EvidenceError, match="terminator"):
        parse_cert_table(bytes(23))
    bad = bytearray(table)
    struct.pack_into("<I", bad, 16, 10_000)
    with pytest.raises(EvidenceError, match="outside"):
        parse_cert_table(bytes(bad))


def test_pinned_roots_self_sign_and_sign_their_cas() -> None:
    for product in Product:
        roots = amd.pinned(product)
        assert set(roots) == {"ARK", "ASK", "ASVK"}
        ark = roots["ARK"]
        ark.verify_directly_issued_by(ark)
        roots["ASK"].verify_directly_issued_by(ark)
        roots["ASVK"].verify_directly_issued_by(ark)
        assert amd.classify(ark).product is product


def test_evidence_without_certificates_names_kds_url() -> None:
    evidence = {
        "attestation_report": report_to_json(parse_report(_synthetic(3))),
        "cert_chain": None,
    }
    with pytest.raises(EvidenceError, match=r"kdsintf\.amd\.com/vcek/v1/Genoa/1111"):
        Verifier().verify(evidence, expected_report_data=bytes(64), now=0)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=REPORT_SIZE, max_size=REPORT_SIZE))
def test_full_size_random_reports_never_crash(data: bytes) -> None:
    with contextlib.suppress(EvidenceError):
        Verifier().verify_report(data, now=0)


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 300) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(_json)
def test_verify_never_crashes_on_random_json(doc: Any) -> None:
    for evidence in (
        doc,
        {"attestation_report": doc},
        {"attestation_report": "", "cert_chain": doc},
    ):
        with contextlib.suppress(EvidenceError):
            Verifier().verify(evidence, expected_report_data=b"", now=0)


def _ark_der_with_bitstring_country() -> bytes:
    """The packaged Milan ARK with its first countryName re-tagged PrintableString -> BIT
    STRING: still a loadable certificate, but pyca refuses the name with a TypeError."""
    from modelseal.crypto.x509_pem import cert_der

    der = bytearray(cert_der(amd.pinned(Product.MILAN)["ARK"]))
    country = bytes.fromhex("06035504061302")  # OID 2.5.4.6, PrintableString, length 2
    at = der.index(country) + 5
    der[at] = 0x03
    return bytes(der)


def test_certificate_name_of_the_wrong_type_is_an_evidence_error() -> None:
    """Found by fuzzing: a TypeError escaped from the name parsing in classify."""
    der = _ark_der_with_bitstring_country()
    with pytest.raises(EvidenceError, match="malformed certificate name"):
        amd.classify(amd.load_certificate(der))
    evidence = {
        "attestation_report": base64.b64encode(bytes(REPORT_SIZE)).decode(),
        "cert_chain": [{"cert_type": "VCEK", "data": list(der)}],
    }
    with pytest.raises(EvidenceError, match="SNP cert_chain VCEK"):
        Verifier().verify(evidence, expected_report_data=b"", now=0)
