"""X.509 certificate encodings (PEM/DER) for code outside ``modelseal.crypto``.

``cryptography``'s encoding enums live in ``cryptography.hazmat``, which only this package
may import; verifiers use these helpers instead.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from modelseal.errors import ConfigError


def cert_pem(cert: x509.Certificate) -> bytes:
    """Canonical PEM (64-character lines, trailing newline)."""
    return cert.public_bytes(serialization.Encoding.PEM)


def cert_der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def parse_certificates(data: bytes) -> list[x509.Certificate]:
    """DER (one) or PEM (one or more) certificates from untrusted bytes.

    Every malformation is a ``ValueError`` (see :func:`_parsed`). Only for files and
    collateral whose format is not known in advance: bytes that must be one DER
    certificate (a TLS peer's) go to :func:`parse_der_certificate`, since a DER certificate
    can carry a PEM one inside it.
    """
    return _parsed(
        lambda: (
            list(x509.load_pem_x509_certificates(data))
            if b"-----BEGIN" in data
            else [x509.load_der_x509_certificate(data)]
        )
    )


def parse_der_certificate(data: bytes) -> x509.Certificate:
    """Exactly one DER certificate from untrusted bytes; malformed -> ``ValueError``."""
    return _parsed(lambda: [x509.load_der_x509_certificate(data)])[0]


def _parsed(load: Callable[[], list[x509.Certificate]]) -> list[x509.Certificate]:
    """Run ``load`` and parse every certificate's extensions, mapping pyca's exceptions.

    pyca raises ``InvalidVersion`` for an unknown version field, ``DuplicateExtension`` (on
    first access to ``extensions``) for a repeated extension and ``TypeError`` for a name
    attribute of the wrong ASN.1 type inside an extension (a BIT STRING under another OID
    than x500UniqueIdentifier), none of them a ``ValueError``, and a flipped byte produces
    any of them. The extensions are therefore parsed here, once, so later accesses cannot
    raise them. pyca's deprecation warnings (e.g. AMD's zero serial numbers) are silenced:
    vendor roots that trip them are still the roots vendors sign with.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            certs = load()
            for cert in certs:
                _ = cert.extensions  # parsed lazily by pyca; cached after this access
    except x509.InvalidVersion as exc:
        raise ValueError(f"unsupported certificate version: {exc}") from None
    except (x509.DuplicateExtension, TypeError) as exc:
        raise ValueError(f"malformed certificate: {exc}") from None
    if not certs:
        raise ValueError("no certificate")
    return certs


def parse_crl(data: bytes) -> x509.CertificateRevocationList:
    """One CRL, DER or PEM, from untrusted bytes; malformed -> ``ValueError`` (see above)."""
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_crl(data)
        return x509.load_der_x509_crl(data)
    except x509.InvalidVersion as exc:
        raise ValueError(f"unsupported CRL version: {exc}") from None


def load_certificate(pem: bytes) -> x509.Certificate:
    """First certificate of a PEM file."""
    try:
        return parse_certificates(pem)[0]
    except ValueError as exc:
        raise ConfigError("not a PEM certificate") from exc


def pem_to_der(pem: bytes) -> bytes:
    """DER of the first certificate in ``pem`` (e.g. a trust anchor for dcap-qvl)."""
    return cert_der(load_certificate(pem))
