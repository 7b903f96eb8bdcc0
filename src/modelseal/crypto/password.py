"""Password hashing for the few places that accept passwords (scrypt, from ``cryptography``).

Only the Intel Trust Authority compatible login of the KBS uses it
(:mod:`modelseal.kbs.ita_users`). The comparison is ``cryptography``'s constant-time
``Scrypt.verify``.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidKey
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

__all__ = ["scrypt_hash", "scrypt_matches"]


def scrypt_hash(password: bytes, *, salt: bytes, n: int, r: int, p: int, length: int) -> bytes:
    """scrypt(``password``, ``salt``) with cost ``n``, block size ``r``, parallelism ``p``."""
    return Scrypt(salt=salt, length=length, n=n, r=r, p=p).derive(password)


def scrypt_matches(password: bytes, digest: bytes, *, salt: bytes, n: int, r: int, p: int) -> bool:
    """True when ``password`` hashes to ``digest``, compared in constant time."""
    kdf = Scrypt(salt=salt, length=len(digest), n=n, r=r, p=p)
    try:
        kdf.verify(password, digest)
    except InvalidKey:
        return False
    return True
