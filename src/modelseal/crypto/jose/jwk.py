"""JSON Web Keys for the KBS protocol: the TEE's ephemeral key pair and its public JWK.

The TEE sends its public key as ``runtime-data.tee-pubkey`` (Trustee kbs-types ``TeePubKey``);
the KBS encrypts the released resource to it. Parsing is strict and fails closed: unknown
``kty``/``crv``/``alg``, wrong coordinate lengths, points off the curve, weak RSA moduli and
the deprecated ``RSA1_5`` are refused with :class:`~modelseal.errors.FormatError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from modelseal._internal.encoding import b64url_decode, b64url_encode
from modelseal.crypto.secret import SecretBytes
from modelseal.errors import ConfigError, FormatError

#: Key-management algorithms the KBS encrypts to.
ALG_ECDH_ES_A256KW: Final = "ECDH-ES+A256KW"
ALG_RSA_OAEP_256: Final = "RSA-OAEP-256"

#: Client-side key choices (Trustee AA ``tee_key_algorithm`` names, plus P-384).
KEY_ALGS: Final = (
    "ECDH-ES+A256KW-P256",
    "ECDH-ES+A256KW-P384",
    "ECDH-ES+A256KW-P521",
    "RSA-OAEP-256",
)
DEFAULT_KEY_ALG: Final = "ECDH-ES+A256KW-P256"

#: JWK curve name -> (curve, coordinate length in bytes)
CURVES: Final[dict[str, tuple[type[ec.EllipticCurve], int]]] = {
    "P-256": (ec.SECP256R1, 32),
    "P-384": (ec.SECP384R1, 48),
    "P-521": (ec.SECP521R1, 66),
}
_CURVE_NAMES: Final[dict[str, str]] = {cls().name: name for name, (cls, _) in CURVES.items()}

MIN_RSA_BITS: Final = 2048
MAX_RSA_BITS: Final = 8192
TEE_RSA_BITS: Final = 3072


@dataclass(frozen=True)
class RecipientKey:
    """A validated public key the KBS may encrypt a resource to."""

    alg: str
    key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey

    @property
    def crv(self) -> str | None:
        if isinstance(self.key, ec.EllipticCurvePublicKey):
            return _CURVE_NAMES[self.key.curve.name]
        return None


def _int_to_b64url(value: int, length: int) -> str:
    return b64url_encode(value.to_bytes(length, "big"))


def ec_public_jwk(key: ec.EllipticCurvePublicKey) -> dict[str, str]:
    """``{"crv","kty","x","y"}`` of an EC public key (fixed-length coordinates)."""
    crv = _CURVE_NAMES.get(key.curve.name)
    if crv is None:
        raise FormatError("unsupported elliptic curve")
    size = CURVES[crv][1]
    numbers = key.public_numbers()
    return {
        "crv": crv,
        "kty": "EC",
        "x": _int_to_b64url(numbers.x, size),
        "y": _int_to_b64url(numbers.y, size),
    }


def rsa_public_jwk(key: rsa.RSAPublicKey) -> dict[str, str]:
    numbers = key.public_numbers()
    n_len = (numbers.n.bit_length() + 7) // 8
    e_len = max(1, (numbers.e.bit_length() + 7) // 8)
    return {
        "kty": "RSA",
        "n": _int_to_b64url(numbers.n, n_len),
        "e": _int_to_b64url(numbers.e, e_len),
    }


#: Longest base64url member of a JWK we accept (an 8192-bit modulus is 1366 characters).
MAX_MEMBER_CHARS: Final = 2048


def _str_member(jwk: Mapping[str, Any], name: str, what: str) -> str:
    value = jwk.get(name)
    if not isinstance(value, str) or not value or len(value) > MAX_MEMBER_CHARS:
        raise FormatError(f"{what}: member {name!r} missing, not a string or too long")
    return value


def ec_public_key_from_jwk(jwk: Any, *, what: str = "tee-pubkey") -> ec.EllipticCurvePublicKey:
    """Strictly parse an EC public JWK; the point must lie on the named curve.

    Any malformed input is a FormatError naming ``what`` and the member, never a value.
    """
    if not isinstance(jwk, Mapping):
        raise FormatError(f"{what} must be a JSON object")
    if jwk.get("kty", "EC") != "EC":
        raise FormatError(f"{what}: kty must be EC")
    crv = _str_member(jwk, "crv", what)
    if crv not in CURVES:
        raise FormatError(f"{what}: unsupported curve")
    curve_cls, size = CURVES[crv]
    x = b64url_decode(_str_member(jwk, "x", what), what=f"{what} x")
    y = b64url_decode(_str_member(jwk, "y", what), what=f"{what} y")
    if len(x) != size or len(y) != size:
        raise FormatError(f"{what}: {crv} coordinates must be {size} bytes")
    try:
        # the uncompressed SEC 1 point; OpenSSL refuses one off the curve (half the CPU
        # of building the key from EllipticCurvePublicNumbers, which checks the same)
        return ec.EllipticCurvePublicKey.from_encoded_point(curve_cls(), b"\x04" + x + y)
    except ValueError as exc:
        raise FormatError(f"{what}: point is not on the curve") from exc


def recipient_from_jwk(jwk: Any) -> RecipientKey:
    """Validate a ``tee-pubkey`` JWK and return the key the KBS encrypts to."""
    what = "tee-pubkey"
    if not isinstance(jwk, Mapping):
        raise FormatError(f"{what} must be a JSON object")
    kty = jwk.get("kty")
    alg = jwk.get("alg")
    if kty == "EC":
        if alg not in (None, ALG_ECDH_ES_A256KW):
            raise FormatError(f"{what}: unsupported alg for an EC key")
        return RecipientKey(ALG_ECDH_ES_A256KW, ec_public_key_from_jwk(jwk, what=what))
    if kty == "RSA":
        if alg not in (None, ALG_RSA_OAEP_256):
            raise FormatError(f"{what}: unsupported alg for an RSA key (RSA1_5 refused)")
        n = int.from_bytes(b64url_decode(_str_member(jwk, "n", what), what=f"{what} n"), "big")
        e = int.from_bytes(b64url_decode(_str_member(jwk, "e", what), what=f"{what} e"), "big")
        if not MIN_RSA_BITS <= n.bit_length() <= MAX_RSA_BITS:
            raise FormatError(f"tee-pubkey: RSA modulus must be {MIN_RSA_BITS}-{MAX_RSA_BITS} bits")
        if e < 3 or e % 2 == 0 or e.bit_length() > 32:
            raise FormatError("tee-pubkey: invalid RSA public exponent")
        try:
            key = rsa.RSAPublicNumbers(e, n).public_key()
        except ValueError as exc:
            raise FormatError("tee-pubkey: invalid RSA key") from exc
        return RecipientKey(ALG_RSA_OAEP_256, key)
    raise FormatError(f"{what}: unsupported kty")


class TeeKeyPair:
    """The TEE's ephemeral key pair: its public JWK goes into ``runtime-data``.

    The private key never leaves this object. :meth:`close` drops it; Python cannot
    overwrite OpenSSL's copy, so dropping the only reference is the best available effort.
    """

    def __init__(self, key_alg: str, private_key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        self.key_alg = key_alg
        self._private: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | None = private_key
        if isinstance(private_key, ec.EllipticCurvePrivateKey):
            self.alg = ALG_ECDH_ES_A256KW
            self._public_jwk: dict[str, str] = {
                "alg": ALG_ECDH_ES_A256KW,
                **ec_public_jwk(private_key.public_key()),
            }
        else:
            self.alg = ALG_RSA_OAEP_256
            self._public_jwk = {"alg": ALG_RSA_OAEP_256, **rsa_public_jwk(private_key.public_key())}

    @classmethod
    def generate(cls, key_alg: str = DEFAULT_KEY_ALG) -> TeeKeyPair:
        """A fresh key for one of :data:`KEY_ALGS`."""
        if key_alg == "RSA-OAEP-256":
            return cls(key_alg, rsa.generate_private_key(65537, TEE_RSA_BITS))
        prefix = ALG_ECDH_ES_A256KW + "-P"
        if key_alg.startswith(prefix) and key_alg in KEY_ALGS:
            crv = "P-" + key_alg[len(prefix) :]
            return cls(key_alg, ec.generate_private_key(CURVES[crv][0]()))
        raise ConfigError(
            f"unknown TEE key algorithm {key_alg!r}; choose one of {', '.join(KEY_ALGS)}"
        )

    def public_jwk(self) -> dict[str, str]:
        """The ``tee-pubkey`` JWK (a copy)."""
        return dict(self._public_jwk)

    @property
    def private_key(self) -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey:
        if self._private is None:
            raise ConfigError("the TEE key pair has been closed")
        return self._private

    def private_pem(self) -> SecretBytes:
        """The private key as unencrypted PKCS#8 PEM, for a guest component that hands the
        key pair to its caller with the token (CoCo AA ``GetToken``)."""
        return SecretBytes(
            self.private_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )

    def close(self) -> None:
        self._private = None

    def __repr__(self) -> str:
        return f"TeeKeyPair({self.key_alg}, <private key redacted>)"
