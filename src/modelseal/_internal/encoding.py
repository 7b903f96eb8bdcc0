"""Strict base64/base64url/hex codecs: malformed input raises ``FormatError``."""

from __future__ import annotations

import base64
import binascii
import re

from modelseal.errors import FormatError

_B64URL = re.compile(r"^[A-Za-z0-9_-]*$")


def b64url_encode(data: bytes) -> str:
    """Base64url without padding (JOSE, sealed headers)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str, *, what: str = "value") -> bytes:
    """Decode base64url with or without padding; reject any other alphabet."""
    stripped = text.rstrip("=")
    if not _B64URL.fullmatch(stripped) or len(stripped) % 4 == 1:
        raise FormatError(f"{what}: not base64url")
    return base64.urlsafe_b64decode(stripped + "=" * (-len(stripped) % 4))


def b64_encode(data: bytes) -> str:
    """Standard base64 with padding (Trustee nonces, sample evidence)."""
    return base64.b64encode(data).decode("ascii")


def b64_decode(text: str, *, what: str = "value") -> bytes:
    """Decode standard base64 with padding, strictly.

    ``validate=True`` is binascii's strict mode: characters outside the alphabet, padding
    anywhere but at the end and data after it are errors (no regex pass first: on a TDX
    quote's 5.6 KB of base64 it cost as much as the decoding).
    """
    if len(text) % 4:
        raise FormatError(f"{what}: not standard base64")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise FormatError(f"{what}: not standard base64") from exc


def hex_decode(text: str, *, what: str = "value") -> bytes:
    """Decode hex, tolerating a ``0x`` prefix and surrounding whitespace."""
    cleaned = "".join(text.split())
    if cleaned[:2].lower() == "0x":
        cleaned = cleaned[2:]
    try:
        return bytes.fromhex(cleaned)
    except ValueError as exc:
        raise FormatError(f"{what}: not hex") from exc
