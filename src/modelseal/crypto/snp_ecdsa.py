"""SEV-SNP signature checks: reports (ECDSA P-384, AMD's raw little-endian r, s) and CRLs.

Kept here because it needs ``cryptography.hazmat``; the SNP verifier stays free of it.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

_P384_ORDER = int(
    "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973",
    16,
)


def is_p384_key(cert: x509.Certificate) -> bool:
    """True if the certificate carries an ECDSA P-384 public key (VCEK/VLEK requirement)."""
    try:
        key = cert.public_key()
    except (ValueError, UnsupportedAlgorithm):  # pyca: unknown key OID is not a ValueError
        return False
    return isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP384R1)


def verify_report_signature(
    cert: x509.Certificate, message: bytes, r_le: bytes, s_le: bytes
) -> bool:
    """Verify ECDSA-P384-SHA384 over ``message`` with r, s given as little-endian integers.

    Returns False (never raises) for a bad signature, out-of-range r/s or a non-P-384 key.
    """
    try:
        key = cert.public_key()
    except (ValueError, UnsupportedAlgorithm):  # pyca: unknown key OID is not a ValueError
        return False
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
        return False
    r = int.from_bytes(r_le, "little")
    s = int.from_bytes(s_le, "little")
    if not (0 < r < _P384_ORDER and 0 < s < _P384_ORDER):
        return False
    try:
        key.verify(encode_dss_signature(r, s), message, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        return False
    return True


def crl_signed_by(crl: x509.CertificateRevocationList, issuer: x509.Certificate) -> bool:
    """True if ``issuer``'s key (RSA, e.g. an AMD ARK, or EC) signed ``crl``."""
    try:
        key = issuer.public_key()
    except (ValueError, UnsupportedAlgorithm):  # pyca: unknown key OID is not a ValueError
        return False
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        return False
    try:
        return crl.is_signature_valid(key)
    except (ValueError, TypeError):
        return False
