"""HKDF-SHA256 (RFC 5869) through cryptography: never hand-rolled."""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from modelseal.crypto.secret import SecretBytes

__all__ = ["hkdf_sha256"]


def hkdf_sha256(ikm: SecretBytes, *, salt: bytes, info: bytes, length: int) -> SecretBytes:
    """Derive ``length`` bytes of key material from ``ikm`` (extract with ``salt``, expand)."""
    okm = HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm.reveal())
    return SecretBytes(okm)
