"""JWTs of the KBS, signed and verified through joserfc: ES256 EAR tokens, HS256 admin tokens.

joserfc (a maintained JOSE library) assembles and checks the JWS: signing input, the raw
``r‖s`` ECDSA form, HMAC, key type and curve, the header registry. Its registry here is our
own (:class:`_Registry`) and knows two algorithms only, so ``none``, RSA and the rest do not
exist for these tokens whatever the header says, and each verifier pins exactly one of them.
On top of the library, every token passes rules it does not have:

* **Bounded parsing.** The token's size and shape and its header (byte and depth caps,
  objects only: :mod:`~modelseal.crypto.jose.compact`) are checked before joserfc sees it;
  the payload is parsed the same bounded way, and only once its signature verified.
* **A pinned header.** ``alg`` must be the verifier's one algorithm; ``crit`` (and with it
  the unencoded payloads of RFC 7797) is refused; only the members we issue may appear;
  ``typ``, when present, is ``JWT``. The key is always the verifier's own, never one named
  by the token (the EAR header's ``jwk`` is informational).
* **Low-S ES256.** ECDSA accepts both ``(r, s)`` and ``(r, n - s)`` for the same message, so
  anyone holding one token could mint a second, byte-different one that verifies: harmless
  for authorization here, but it breaks any use of the token bytes as an identifier (caches,
  logs, replay lists). :class:`_LowSES256` therefore always emits the low half
  (``s <= n/2``) and refuses the high-S twin, as Bitcoin (BIP 62/146) and Ethereum (EIP-2)
  do. Standard verifiers accept either half, so our tokens still verify everywhere.
* **Integer times.** ``exp``, ``iat`` and ``nbf`` must be integers in ``[0, 2**53 - 1]``
  (:func:`~modelseal.crypto.jose.compact.time_claim`); joserfc's own claim checks take
  floats, and RFC 7519 allows fractions. ``exp``/``iat``/``nbf`` with a leeway, ``aud``,
  ``iss`` and ``jti`` are then checked by :func:`check_claims`.

Every failure is a :class:`~modelseal.errors.TokenError` whose message names no secret and no
token bytes.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwa import ESAlgorithm, HMACAlgorithm, JWSAlgModel
from joserfc.jwk import ECKey, OctKey
from joserfc.registry import JWS_HEADER_REGISTRY

from modelseal._internal.canonical import compact_json
from modelseal._internal.encoding import b64url_encode
from modelseal.crypto.jose.compact import (
    MAX_TOKEN_CHARS,
    decode_segment,
    json_object,
    segments,
    time_claim,
)
from modelseal.crypto.jose.jwk import ec_public_jwk
from modelseal.crypto.secret import SecretBytes
from modelseal.errors import ConfigError, TokenError

__all__ = [
    "ALG_ES256",
    "ALG_HS256",
    "P256_ORDER",
    "ClaimRules",
    "TokenSigningKey",
    "check_claims",
    "low_s",
    "sign_hs256",
    "verify_hs256",
]

ALG_ES256: Final = "ES256"
ALG_HS256: Final = "HS256"
#: Order of the P-256 group: signatures need ``0 < r < n`` and ``0 < s <= n // 2``.
P256_ORDER: Final = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
_P256_BYTES: Final = 32
#: The header members each kind of token is issued with; nothing else is accepted.
_ES256_HEADER: Final = frozenset({"alg", "typ", "jwk"})
_HS256_HEADER: Final = frozenset({"alg", "typ", "kid"})


def low_s(s: int) -> int:
    """The low half of an ECDSA ``s`` (``n - s`` when ``s > n/2``): same signature, one form."""
    return P256_ORDER - s if s > P256_ORDER // 2 else s


def _is_low_s_p256(signature: bytes) -> bool:
    """``signature`` is a raw ``r‖s`` with ``0 < r < n`` and ``0 < s <= n/2``."""
    if len(signature) != 2 * _P256_BYTES:
        return False
    r = int.from_bytes(signature[:_P256_BYTES], "big")
    s = int.from_bytes(signature[_P256_BYTES:], "big")
    return 0 < r < P256_ORDER and 0 < s <= P256_ORDER // 2


class _LowSES256(ESAlgorithm):
    """joserfc's ES256 that signs in the low-S form only and refuses high-S signatures."""

    def __init__(self) -> None:
        super().__init__(ALG_ES256, "P-256", 256, recommended=True)

    def sign(self, msg: bytes, key: ECKey) -> bytes:
        raw = super().sign(msg, key)
        s = int.from_bytes(raw[_P256_BYTES:], "big")
        return raw[:_P256_BYTES] + low_s(s).to_bytes(_P256_BYTES, "big")

    def verify(self, msg: bytes, sig: bytes, key: ECKey) -> bool:
        return _is_low_s_p256(sig) and super().verify(msg, sig, key)


class _Registry(jws.JWSRegistry):
    """A JWS registry that knows only our two algorithms.

    joserfc keeps its algorithms in a class attribute; this subclass has its own, so the
    library's default registry (and anything else in the process using it) is untouched.
    """

    algorithms: dict[str, JWSAlgModel] = {  # noqa: RUF012 - joserfc's class-level table
        ALG_ES256: _LowSES256(),
        ALG_HS256: HMACAlgorithm(256),
    }
    recommended: list[str] = []  # noqa: RUF012 - every use names its algorithm
    #: Only the members we issue: with ``strict_check_header`` the library refuses the rest
    #: too (and checks fewer entries per token).
    default_header_registry = {  # noqa: RUF012 - joserfc's class-level table
        name: JWS_HEADER_REGISTRY[name] for name in sorted(_ES256_HEADER | _HS256_HEADER)
    }


_ES256_ONLY: Final = _Registry(algorithms=[ALG_ES256])
_HS256_ONLY: Final = _Registry(algorithms=[ALG_HS256])


@dataclass(frozen=True)
class ClaimRules:
    """What the registered claims of a verified token must say.

    ``what`` names the token in error messages; ``audience_lists`` accepts an ``aud`` list
    that contains ``audience`` (RFC 7519), else ``aud`` must be exactly ``audience``;
    ``max_lifetime`` caps ``exp - iat``.
    """

    issuer: str
    audience: str
    leeway: float = 0.0
    audience_lists: bool = True
    max_lifetime: int | None = None
    what: str = "token"


def check_claims(payload: Mapping[str, Any], rules: ClaimRules, *, now: float) -> None:
    """``exp``/``iat``/``nbf`` (integers, with leeway), ``aud``, ``iss`` and ``jti``."""
    what = rules.what
    exp = time_claim(payload, "exp", what=what)
    iat = time_claim(payload, "iat", what=what)
    nbf = time_claim(payload, "nbf", what=what) if "nbf" in payload else None
    if rules.max_lifetime is not None and exp - iat > rules.max_lifetime:
        raise TokenError(f"{what} lifetime exceeds the maximum")
    if now >= exp + rules.leeway:
        raise TokenError(f"{what} has expired")
    if iat > now + rules.leeway or (nbf is not None and nbf > now + rules.leeway):
        raise TokenError(f"{what} is not valid yet")
    aud = payload.get("aud")
    listed = rules.audience_lists and isinstance(aud, list) and rules.audience in aud
    if not (aud == rules.audience or listed):
        raise TokenError(f"{what} audience mismatch")
    if payload.get("iss") != rules.issuer:
        raise TokenError(f"{what} issuer mismatch")
    jti = payload.get("jti")
    if not isinstance(jti, str) or not jti:
        raise TokenError(f"{what} has no jti")


def _checked_header(
    token: str, *, alg: str, members: frozenset[str], max_chars: int, what: str
) -> bytes:
    """Bounded parse of the header and its rules; returns the (unverified) signature.

    The payload is left to the library's base64url decoding and parsed, bounded, only once
    the signature verified: a forged token's payload is never parsed at all.
    """
    header_b64, _payload_b64, signature_b64 = segments(token, max_chars=max_chars)
    header = json_object(decode_segment(header_b64, "header"), "header", max_chars=max_chars)
    if header.get("alg") != alg:
        raise TokenError(f"{what} algorithm is not {alg}")
    if "crit" in header:
        raise TokenError(f"{what} has critical header members")
    if not set(header) <= members:
        raise TokenError(f"{what} header may only carry {', '.join(sorted(members))}")
    if header.get("typ", "JWT") != "JWT":
        raise TokenError(f"{what} typ must be JWT")
    return decode_segment(signature_b64, "signature")


def _verified_payload(
    token: str, key: ECKey | OctKey, registry: _Registry, *, max_chars: int, what: str
) -> dict[str, Any]:
    """The library verifies the signature; the payload it decoded is then parsed bounded."""
    try:
        verified = jws.deserialize_compact(token, key, registry=registry)
    except (JoseError, ValueError) as exc:
        raise TokenError(f"{what} signature is invalid") from exc
    return json_object(verified.payload, "payload", max_chars=max_chars)


class TokenSigningKey:
    """The KBS's P-256 token-signing key (PEM PKCS#8 file, mode 0600, created once)."""

    def __init__(self, private_key: ec.EllipticCurvePrivateKey) -> None:
        if not isinstance(private_key.curve, ec.SECP256R1):
            raise ConfigError("the token-signing key must be an EC P-256 key")
        self._key = private_key
        self.public_key = private_key.public_key()
        self._signer = ECKey.import_key(private_key)
        self._verifier = ECKey.import_key(self.public_key)
        self._jwk = {"alg": ALG_ES256, **ec_public_jwk(self.public_key)}

    @classmethod
    def generate(cls) -> TokenSigningKey:
        return cls(ec.generate_private_key(ec.SECP256R1()))

    @classmethod
    def load_or_create(cls, path: Path) -> TokenSigningKey:
        """Load the key at ``path``; create it (0600, exclusively) if it does not exist."""
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return cls.load(path)
        except OSError as exc:
            raise ConfigError(f"cannot create token-signing key {path}: {exc.strerror}") from exc
        key = cls.generate()
        pem = key._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
            fh.flush()
            os.fsync(fh.fileno())
        return key

    @classmethod
    def load(cls, path: Path) -> TokenSigningKey:
        try:
            info = path.stat()
            if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise ConfigError(f"token-signing key {path} is readable by others; chmod 600 it")
            data = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read token-signing key {path}: {exc.strerror}") from exc
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"token-signing key {path} is not an unencrypted PEM key") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ConfigError(f"token-signing key {path} is not an EC P-256 key")
        return cls(key)

    def public_jwk(self) -> dict[str, str]:
        """``{"alg":"ES256","crv":"P-256","kty":"EC","x","y"}`` for the token header."""
        return dict(self._jwk)

    def sign_jwt(self, payload: Mapping[str, Any]) -> str:
        """Compact low-S ES256 JWS of ``payload`` with header ``{alg, typ, jwk}``."""
        header = {"alg": ALG_ES256, "typ": "JWT", "jwk": self._jwk}
        return jws.serialize_compact(
            header, compact_json(payload), self._signer, registry=_ES256_ONLY
        )

    def verify_jwt(
        self,
        token: str,
        *,
        now: float,
        audience: str,
        issuer: str,
        leeway: float = 0.0,
    ) -> dict[str, Any]:
        """Verify a token this key signed and return its payload, or raise TokenError."""
        rules = ClaimRules(issuer=issuer, audience=audience, leeway=leeway)
        signature = _checked_header(
            token, alg=ALG_ES256, members=_ES256_HEADER, max_chars=MAX_TOKEN_CHARS, what="token"
        )
        if len(signature) != 2 * _P256_BYTES:
            raise TokenError("token signature has the wrong length")
        if not _is_low_s_p256(signature):
            raise TokenError("token signature is not a low-S ES256 signature")
        payload = _verified_payload(
            token, self._verifier, _ES256_ONLY, max_chars=MAX_TOKEN_CHARS, what="token"
        )
        check_claims(payload, rules, now=now)
        return payload


def _oct_key(secret: SecretBytes) -> OctKey:
    # imported as a JWK: joserfc would sniff raw bytes for a PEM header
    return OctKey.import_key({"kty": "oct", "k": b64url_encode(secret.reveal())})


def sign_hs256(payload: Mapping[str, Any], secret: SecretBytes, *, kid: str) -> str:
    """Compact HS256 JWS of ``payload`` with header ``{alg, typ, kid}``."""
    header = {"alg": ALG_HS256, "typ": "JWT", "kid": kid}
    return jws.serialize_compact(
        header, compact_json(payload), _oct_key(secret), registry=_HS256_ONLY
    )


def verify_hs256(
    token: str, secret: SecretBytes, *, rules: ClaimRules, now: float, max_chars: int
) -> dict[str, Any]:
    """Verify an HS256 token under ``secret`` and ``rules``; its payload, or TokenError."""
    _checked_header(
        token, alg=ALG_HS256, members=_HS256_HEADER, max_chars=max_chars, what=rules.what
    )
    payload = _verified_payload(
        token, _oct_key(secret), _HS256_ONLY, max_chars=max_chars, what=rules.what
    )
    check_claims(payload, rules, now=now)
    return payload
