"""RSA-OAEP wrapping of the session wrapping key (SWK) for ITA/CNAP key transfer.

The workload sends its RSA public key as ``user_data`` (Intel CNAP's
``SimpleKeyBrokerClient`` in ``cnap/core/keybroker.py``; ITA KBS's key-transfer API) in one of
two encodings, told apart by their first byte without any guessing:

* DER SubjectPublicKeyInfo (CNAP): starts with ``0x30`` (ASN.1 SEQUENCE);
* Intel Trust Authority: ``uint32 little-endian exponent ‖ big-endian modulus``. A
  modulus of >= 3072 bits means the fifth byte is non-zero, and a valid exponent
  (65537 = ``01 00 01 00``) never starts with ``0x30`` together with a DER length that
  parses, so the DER attempt is made first and must consume the whole input.

``wrapped_swk = RSA-OAEP(SHA-256, MGF1-SHA-256, empty label)``; moduli under 3072 bits are
refused (ITA refuses <= 2048, CNAP generates 3072).
"""

from __future__ import annotations

import secrets

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from modelseal.crypto.secret import SecretBytes
from modelseal.errors import DecryptionError, FormatError

__all__ = [
    "MIN_RSA_BITS",
    "SWK_SIZE",
    "WorkloadKey",
    "WorkloadKeyPair",
    "new_swk",
]

MIN_RSA_BITS = 3072
MAX_RSA_BITS = 16384
SWK_SIZE = 32


def _oaep() -> padding.OAEP:
    return padding.OAEP(
        mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None
    )


def new_swk() -> SecretBytes:
    """A fresh random AES-256 session wrapping key."""
    return SecretBytes(secrets.token_bytes(SWK_SIZE))


class WorkloadKey:
    """A workload's RSA public key, checked for size, able to wrap an SWK."""

    __slots__ = ("_key",)

    def __init__(self, key: rsa.RSAPublicKey) -> None:
        bits = key.key_size
        if bits < MIN_RSA_BITS or bits > MAX_RSA_BITS:
            raise FormatError(f"workload RSA key has {bits} bits; {MIN_RSA_BITS} or more required")
        if key.public_numbers().e < 3 or key.public_numbers().e % 2 == 0:
            raise FormatError("workload RSA key has an invalid public exponent")
        self._key = key

    @property
    def bits(self) -> int:
        return self._key.key_size

    @classmethod
    def from_user_data(cls, user_data: bytes) -> WorkloadKey:
        """Parse DER SPKI (CNAP) or ITA ``exponent(LE u32) ‖ modulus(BE)``, else FormatError."""
        if not user_data or len(user_data) > 4096:
            raise FormatError("user_data must hold an RSA public key")
        if user_data[0] == 0x30:
            try:
                key = serialization.load_der_public_key(user_data)
            except (ValueError, TypeError, UnsupportedAlgorithm):  # unknown algorithm OID
                key = None
            if key is not None:
                if not isinstance(key, rsa.RSAPublicKey):
                    raise FormatError("user_data public key is not RSA")
                return cls(key)
        if len(user_data) < 4 + MIN_RSA_BITS // 8:
            raise FormatError(
                "user_data is neither DER SubjectPublicKeyInfo nor an ITA exponent‖modulus "
                f"RSA key of at least {MIN_RSA_BITS} bits"
            )
        e = int.from_bytes(user_data[:4], "little")
        n = int.from_bytes(user_data[4:], "big")
        try:
            key = rsa.RSAPublicNumbers(e, n).public_key()
        except ValueError:
            raise FormatError("user_data RSA key is malformed") from None
        return cls(key)

    def wrap(self, swk: SecretBytes) -> bytes:
        """RSA-OAEP-SHA256 of the SWK (``wrapped_swk``)."""
        return self._key.encrypt(swk.reveal(), _oaep())

    def spki_der(self) -> bytes:
        return self._key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def ita_bytes(self) -> bytes:
        """The ITA encoding: uint32 LE exponent ‖ big-endian modulus."""
        numbers = self._key.public_numbers()
        return numbers.e.to_bytes(4, "little") + numbers.n.to_bytes((self.bits + 7) // 8, "big")


class WorkloadKeyPair:
    """The TEE side of a transfer: an RSA key pair whose private half unwraps the SWK."""

    __slots__ = ("_private",)

    def __init__(self, bits: int = MIN_RSA_BITS) -> None:
        if bits < MIN_RSA_BITS:
            raise FormatError(f"workload RSA keys must have at least {MIN_RSA_BITS} bits")
        self._private = rsa.generate_private_key(public_exponent=65537, key_size=bits)

    def __repr__(self) -> str:
        return f"WorkloadKeyPair(<{self._private.key_size}-bit RSA, redacted>)"

    @property
    def public(self) -> WorkloadKey:
        return WorkloadKey(self._private.public_key())

    def unwrap(self, wrapped_swk: bytes) -> SecretBytes:
        """Recover the SWK; any failure is one opaque DecryptionError."""
        try:
            return SecretBytes(self._private.decrypt(wrapped_swk, _oaep()))
        except ValueError:
            raise DecryptionError() from None
