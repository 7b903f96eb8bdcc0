"""ECDSA P-256 signatures in the raw ``r || s`` form DCAP quotes carry.

Kept here because it needs ``cryptography.hazmat``; the quote verifiers stay free of it.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

__all__ = ["verify_raw_p256"]


def verify_raw_p256(public_xy: bytes, data: bytes, signature: bytes) -> bool:
    """Check a raw ``r || s`` ECDSA-SHA256 signature by the P-256 point ``x || y``.

    False (never an exception) for a bad signature, a point off the curve or wrong sizes.
    """
    if len(public_xy) != 64 or len(signature) != 64:
        return False
    try:
        pub = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + public_xy)
        der = encode_dss_signature(
            int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
        )
        pub.verify(der, data, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        return False
    return True
