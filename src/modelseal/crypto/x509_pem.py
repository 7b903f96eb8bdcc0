"""X.509 certificate encodings (PEM/DER) for code outside ``modelseal.crypto``.

``cryptography``'s encoding enums live in ``cryptography.hazmat``, which only this package
may import; verifiers use these helpers instead.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from modelseal.errors import ConfigError


def cert_pem(cert: x509.Certificate) -> bytes:
    """Canonical PEM (64-character lines, trailing newline)."""
    return cert.public_bytes(serialization.Encoding.PEM)


def cert_der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def load_certificate(pem: bytes) -> x509.Certificate:
    """First certificate of a PEM file."""
    try:
        return x509.load_pem_x509_certificates(pem)[0]
    except (ValueError, IndexError) as exc:
        raise ConfigError("not a PEM certificate") from exc


def pem_to_der(pem: bytes) -> bytes:
    """DER of the first certificate in ``pem`` (e.g. a trust anchor for dcap-qvl)."""
    return cert_der(load_certificate(pem))
