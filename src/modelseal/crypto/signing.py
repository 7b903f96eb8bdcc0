"""ES256 JWS/JWT for KBS attestation tokens (EAR), hand-rolled on ``cryptography``'s ECDSA.

Verification is deliberately narrow: the header must say ``ES256`` (no ``none``, no HMAC, no
algorithm chosen by the token), the signature is checked against the KBS's own key (never a
key named in the token), and ``exp``/``iat``/``nbf``/``aud``/``iss`` are enforced. Every
failure is a :class:`~modelseal.errors.TokenError` whose message names no secret.

Signatures are low-S only. ECDSA accepts both ``(r, s)`` and ``(r, n - s)`` for the same
message, so anyone holding one token could mint a second, byte-different one that verifies:
harmless for authorization here, but it breaks any use of the token bytes as an identifier
(caches, logs, replay lists). :meth:`TokenSigningKey.sign_jwt` therefore always emits the
low half (``s <= n/2``) and :meth:`~TokenSigningKey.verify_jwt` refuses the high-S twin, as
Bitcoin (BIP 62/146) and Ethereum (EIP-2) do. Time claims must be integers in the I-JSON
range (RFC 7519 NumericDate, without fractions): ``NaN``, infinities, floats, booleans and
strings are refused even under a valid signature, so a signer's bug cannot mint a token that
never expires.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from modelseal._internal.bounded import load_json
from modelseal._internal.encoding import b64url_decode, b64url_encode
from modelseal.crypto.jwk import ec_public_jwk
from modelseal.errors import ConfigError, FormatError, TokenError

ALG_ES256: Final = "ES256"
#: Tokens travel in headers; anything bigger is refused before parsing.
MAX_TOKEN_CHARS: Final = 16 * 1024
#: Order of the P-256 group: signatures need ``0 < r < n`` and ``0 < s <= n // 2``.
P256_ORDER: Final = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
#: Largest accepted time claim: the I-JSON safe integer range.
MAX_NUMERIC_DATE: Final = 2**53 - 1


def _json_segment(value: Mapping[str, Any]) -> str:
    # allow_nan=False: NaN/Infinity are not JSON, and no verifier here would accept them
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return b64url_encode(text.encode())


def _decode_segment(segment: str, what: str) -> dict[str, Any]:
    try:
        value = load_json(
            b64url_decode(segment, what=what), what=f"token {what}", max_bytes=MAX_TOKEN_CHARS
        )
    except FormatError as exc:
        raise TokenError(f"token {what} is malformed") from exc
    if not isinstance(value, dict):
        raise TokenError(f"token {what} is not a JSON object")
    return value


def split_jwt(token: str) -> tuple[dict[str, Any], dict[str, Any], bytes, bytes]:
    """Parse ``header.payload.signature`` without verifying: (header, payload, input, sig)."""
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_CHARS:
        raise TokenError("token missing or too large")
    parts = token.split(".")
    if len(parts) != 3:
        raise TokenError("token is not a compact JWS")
    header = _decode_segment(parts[0], "header")
    payload = _decode_segment(parts[1], "payload")
    try:
        signature = b64url_decode(parts[2], what="signature")
    except FormatError as exc:
        raise TokenError("token signature is malformed") from exc
    return header, payload, f"{parts[0]}.{parts[1]}".encode("ascii"), signature


def time_claim(payload: Mapping[str, Any], name: str) -> int:
    """The NumericDate claim ``name``: an integer in ``[0, 2**53 - 1]``, else TokenError."""
    value = payload.get(name)
    if type(value) is not int or not 0 <= value <= MAX_NUMERIC_DATE:
        raise TokenError(f"token claim {name!r} missing or not an integer time")
    return value


def low_s(s: int) -> int:
    """The low half of an ECDSA ``s`` (``n - s`` when ``s > n/2``): same signature, one form."""
    return P256_ORDER - s if s > P256_ORDER // 2 else s


class TokenSigningKey:
    """The KBS's P-256 token-signing key (PEM PKCS#8 file, mode 0600, created once)."""

    def __init__(self, private_key: ec.EllipticCurvePrivateKey) -> None:
        if not isinstance(private_key.curve, ec.SECP256R1):
            raise ConfigError("the token-signing key must be an EC P-256 key")
        self._key = private_key
        self.public_key = private_key.public_key()
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
        """Compact ES256 JWS of ``payload`` with header ``{alg, typ, jwk}``."""
        header = {"alg": ALG_ES256, "typ": "JWT", "jwk": self._jwk}
        signing_input = f"{_json_segment(header)}.{_json_segment(payload)}"
        der = self._key.sign(signing_input.encode("ascii"), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        raw = r.to_bytes(32, "big") + low_s(s).to_bytes(32, "big")
        return f"{signing_input}.{b64url_encode(raw)}"

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
        header, payload, signing_input, signature = split_jwt(token)
        if header.get("alg") != ALG_ES256:
            raise TokenError("token algorithm is not ES256")
        if "crit" in header:
            raise TokenError("token has critical header members")
        if len(signature) != 64:
            raise TokenError("token signature has the wrong length")
        r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
        if not (0 < r < P256_ORDER and 0 < s <= P256_ORDER // 2):
            raise TokenError("token signature is not a low-S ES256 signature")
        der = encode_dss_signature(r, s)
        try:
            self.public_key.verify(der, signing_input, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature as exc:
            raise TokenError("token signature is invalid") from exc
        exp = time_claim(payload, "exp")
        iat = time_claim(payload, "iat")
        nbf = time_claim(payload, "nbf") if "nbf" in payload else None
        if now >= exp + leeway:
            raise TokenError("token expired")
        if iat > now + leeway or (nbf is not None and nbf > now + leeway):
            raise TokenError("token not yet valid")
        aud = payload.get("aud")
        if not (aud == audience or (isinstance(aud, list) and audience in aud)):
            raise TokenError("token audience mismatch")
        if payload.get("iss") != issuer:
            raise TokenError("token issuer mismatch")
        if not isinstance(payload.get("jti"), str):
            raise TokenError("token has no jti")
        return payload
