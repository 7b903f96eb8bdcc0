"""ES256 JWS/JWT for KBS attestation tokens (EAR), hand-rolled on ``cryptography``'s ECDSA.

Verification is deliberately narrow: the header must say ``ES256`` (no ``none``, no HMAC, no
algorithm chosen by the token), the signature is checked against the KBS's own key (never a
key named in the token), and ``exp``/``iat``/``nbf``/``aud``/``iss`` are enforced. Every
failure is a :class:`~modelseal.errors.TokenError` whose message names no secret.
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

from modelseal._internal.encoding import b64url_decode, b64url_encode
from modelseal.crypto.jwk import ec_public_jwk
from modelseal.errors import ConfigError, FormatError, TokenError

ALG_ES256: Final = "ES256"
#: Tokens travel in headers; anything bigger is refused before parsing.
MAX_TOKEN_CHARS: Final = 16 * 1024


def _json_segment(value: Mapping[str, Any]) -> str:
    return b64url_encode(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())


def _decode_segment(segment: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(b64url_decode(segment, what=what))
    except (FormatError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
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


def _number(payload: Mapping[str, Any], name: str) -> float:
    value = payload.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TokenError(f"token claim {name!r} missing or not a number")
    try:
        return float(value)
    except OverflowError:  # a JSON integer beyond the float range
        raise TokenError(f"token claim {name!r} is out of range") from None


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
        return f"{signing_input}.{b64url_encode(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"

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
        der = encode_dss_signature(
            int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
        )
        try:
            self.public_key.verify(der, signing_input, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature as exc:
            raise TokenError("token signature is invalid") from exc
        exp = _number(payload, "exp")
        iat = _number(payload, "iat")
        nbf = _number(payload, "nbf") if "nbf" in payload else None
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
