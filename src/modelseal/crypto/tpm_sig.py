"""Public-key handling for TPM attestation keys: SPKI conversion and quote signatures.

Keys travel as SubjectPublicKeyInfo DER so the TPM verifier can compare and store them
without touching ``cryptography.hazmat`` itself.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

_CURVES: dict[str, ec.EllipticCurve] = {
    "p256": ec.SECP256R1(),
    "p384": ec.SECP384R1(),
    "p521": ec.SECP521R1(),
}
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}
_SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def rsa_spki(n: int, e: int) -> bytes:
    """SPKI DER of an RSA public key; ``ValueError`` if the numbers are not a valid key."""
    return rsa.RSAPublicNumbers(e, n).public_key().public_bytes(*_SPKI)


def ecc_spki(curve: str, x: bytes, y: bytes) -> bytes:
    """SPKI DER of an EC public key on ``curve`` (p256/p384/p521); ``ValueError`` if invalid."""
    numbers = ec.EllipticCurvePublicNumbers(
        int.from_bytes(x, "big"), int.from_bytes(y, "big"), _CURVES[curve]
    )
    return numbers.public_key().public_bytes(*_SPKI)


def normalize_public_key(data: bytes) -> bytes:
    """PEM or DER public key (RSA/EC) -> canonical SPKI DER; ``ValueError`` otherwise."""
    try:
        if b"-----BEGIN" in data:
            key = serialization.load_pem_public_key(data)
        else:
            key = serialization.load_der_public_key(data)
    except UnsupportedAlgorithm as exc:
        raise ValueError("unsupported public key algorithm") from exc
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise ValueError("only RSA and EC attestation keys are supported")
    return key.public_bytes(*_SPKI)


def certificate_spki(cert: x509.Certificate) -> bytes:
    """SPKI DER of a certificate's public key; ``ValueError`` for a key pyca cannot load.

    pyca raises ``UnsupportedAlgorithm`` (not a ``ValueError``) for an unknown key OID,
    which one flipped byte of an evidence certificate produces.
    """
    try:
        return cert.public_key().public_bytes(*_SPKI)
    except UnsupportedAlgorithm as exc:
        raise ValueError(f"unsupported certificate key: {exc}") from None


def verify_quote_signature(
    spki_der: bytes,
    scheme: str,
    hash_name: str,
    message: bytes,
    *,
    value: bytes = b"",
    r: bytes = b"",
    s: bytes = b"",
) -> bool:
    """Verify a TPMT_SIGNATURE (rsassa/rsapss value, or ecdsa r/s) over ``message``.

    Returns False for any mismatch: wrong key type for the scheme, bad signature, bad key.
    """
    algorithm = _HASHES.get(hash_name)
    if algorithm is None:
        return False
    try:
        key = serialization.load_der_public_key(spki_der)
    except (ValueError, UnsupportedAlgorithm):
        return False
    try:
        if scheme in ("rsassa", "rsapss") and isinstance(key, rsa.RSAPublicKey):
            pad: padding.AsymmetricPadding = (
                padding.PKCS1v15()
                if scheme == "rsassa"
                else padding.PSS(padding.MGF1(algorithm()), padding.PSS.AUTO)
            )
            key.verify(value, message, pad, algorithm())
            return True
        if scheme == "ecdsa" and isinstance(key, ec.EllipticCurvePublicKey):
            der = encode_dss_signature(int.from_bytes(r, "big"), int.from_bytes(s, "big"))
            key.verify(der, message, ec.ECDSA(algorithm()))
            return True
    except (InvalidSignature, ValueError):
        return False
    return False
