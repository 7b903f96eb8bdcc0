"""Certificate/CRL loading from untrusted bytes: every malformation is a ``ValueError``.

pyca raises ``InvalidVersion`` (not a ``ValueError``) for an unknown version field, which a
single flipped byte of a quote's chain, a collateral CRL or an AK certificate produces; the
verifiers rely on these loaders to turn that into their typed errors instead of a crash.
"""

from __future__ import annotations

import base64
import datetime as dt
from typing import Any

import pytest
from cryptography import x509

from modelseal.crypto.x509_pem import cert_der, cert_pem, parse_certificates, parse_crl
from modelseal.crypto.x509_test_ca import P256Key, issue_certificate, issue_crl

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _self_signed(key: P256Key, cn: str, **extra: Any) -> x509.Certificate:
    return issue_certificate(
        subject_cn=cn,
        subject_key=key,
        issuer_key=key,
        issuer_cert=None,
        serial=1,
        not_before=NOW,
        not_after=NOW + dt.timedelta(days=1),
        **extra,
    )


@pytest.fixture(scope="module")
def issued() -> tuple[x509.Certificate, bytes]:
    key = P256Key.generate()
    cert = _self_signed(key, "review root", ca=True)
    crl = issue_crl(
        issuer_key=key,
        issuer_cert=cert,
        revoked_serials=[5],
        this_update=NOW,
        next_update=NOW + dt.timedelta(days=1),
    )
    return cert, crl


def _pem(der: bytes, label: str) -> bytes:
    body = base64.encodebytes(der).decode().replace("\n", "")
    lines = "\n".join(body[i : i + 64] for i in range(0, len(body), 64))
    return f"-----BEGIN {label}-----\n{lines}\n-----END {label}-----\n".encode()


def test_der_pem_and_chains(issued: tuple[x509.Certificate, bytes]) -> None:
    cert, crl = issued
    assert parse_certificates(cert_der(cert)) == [cert]
    assert parse_certificates(cert_pem(cert) * 2) == [cert, cert]
    assert parse_crl(crl).get_revoked_certificate_by_serial_number(5) is not None
    assert parse_crl(_pem(crl, "X509 CRL")) == parse_crl(crl)


@pytest.mark.parametrize("data", [b"", b"junk", b"-----BEGIN CERTIFICATE-----\n-----END"])
def test_garbage_is_value_error(data: bytes) -> None:
    with pytest.raises(ValueError):
        parse_certificates(data)
    with pytest.raises(ValueError):
        parse_crl(data)


def test_unknown_versions_are_value_errors(issued: tuple[x509.Certificate, bytes]) -> None:
    cert, crl = issued
    der = bytearray(cert_der(cert))
    at = der.find(bytes([0xA0, 0x03, 0x02, 0x01, 0x02]))  # version [0] EXPLICIT INTEGER 2
    assert at > 0
    der[at + 4] = 7
    for blob in (bytes(der), _pem(bytes(der), "CERTIFICATE")):
        with pytest.raises(ValueError, match="version"):
            parse_certificates(blob)
    bad_crl = bytearray(crl)
    at = bad_crl.find(bytes([0x02, 0x01, 0x01]))  # tbsCertList version INTEGER 1 (v2)
    assert at > 0
    bad_crl[at + 2] = 0
    for blob in (bytes(bad_crl), _pem(bytes(bad_crl), "X509 CRL")):
        with pytest.raises(ValueError, match="version"):
            parse_crl(blob)


def test_duplicate_extension_is_value_error() -> None:
    """pyca raises DuplicateExtension lazily, on first ``.extensions``; the loader does it."""
    extensions = [("1.2.3.4", b"\x05\x00"), ("1.2.3.5", b"\x05\x00")]
    cert = _self_signed(P256Key.generate(), "dup", ca=False, extra_extensions=extensions)
    oid_4, oid_5 = bytes([0x06, 0x03, 0x2A, 0x03, 0x04]), bytes([0x06, 0x03, 0x2A, 0x03, 0x05])
    der = cert_der(cert)
    assert oid_5 in der
    with pytest.raises(ValueError, match="Duplicate"):
        parse_certificates(der.replace(oid_5, oid_4))


def test_name_attribute_of_the_wrong_type_is_a_value_error() -> None:
    """A subjectAltName directoryName whose attribute is a BIT STRING under an OID other
    than x500UniqueIdentifier: pyca raised TypeError while parsing the extensions, which
    escaped the TPM AK-certificate check (found by fuzzing)."""
    attribute = bytes.fromhex("3009 060355042e 03020001")  # SEQUENCE { 2.5.4.46, BIT STRING }
    name = b"\x30\x0d\x31\x0b" + attribute
    san = b"\x30\x11\xa4\x0f" + name  # GeneralNames [ directoryName ]
    cert = _self_signed(P256Key.generate(), "ak", ca=False, extra_extensions=[("2.5.29.17", san)])
    with pytest.raises(ValueError, match="malformed certificate"):
        parse_certificates(cert_der(cert))
