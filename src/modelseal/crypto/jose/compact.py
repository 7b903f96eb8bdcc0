"""Bounded reading of a compact JWS (``header.payload.signature``) without verifying it.

Both token verifiers (:mod:`modelseal.crypto.jose.jwt`) check a token's size and shape and
parse its header here before the JWS library sees it, and parse the payload here once the
library verified the signature. Every hostile shape - too long, not ASCII, wrong number of
segments, bad base64url, a JSON segment that is not an object, nested deeper than
:data:`~modelseal._internal.bounded.MAX_DEPTH` or not JSON at all - ends in one
:class:`~modelseal.errors.TokenError` naming the segment, never its bytes. The loader uses
:func:`split_jwt` alone to read the lifetime of the token the KBS gave it (it cannot verify
the KBS's signature and need not: the KBS verifies the token again on every request).

No JWS library is imported here: the loader runs inside the TEE, where start-up time counts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from modelseal._internal.bounded import load_json
from modelseal._internal.encoding import b64url_decode
from modelseal.errors import FormatError, TokenError

#: Tokens travel in HTTP headers; anything bigger is refused before parsing. A token with
#: the (compact) claims of a CPU TEE and sixteen GPUs stays under it.
MAX_TOKEN_CHARS: Final = 96 * 1024
#: Largest accepted time claim: the I-JSON safe integer range (RFC 7493).
MAX_NUMERIC_DATE: Final = 2**53 - 1


def json_object(data: bytes, what: str, *, max_chars: int = MAX_TOKEN_CHARS) -> dict[str, Any]:
    """A token's JSON segment (``what`` is ``header`` or ``payload``), bounded; TokenError."""
    try:
        value = load_json(data, what=f"token {what}", max_bytes=max_chars)
    except FormatError as exc:
        raise TokenError(f"token {what} is malformed") from exc
    if not isinstance(value, dict):
        raise TokenError(f"token {what} is not a JSON object")
    return value


def segments(token: str, *, max_chars: int = MAX_TOKEN_CHARS) -> list[str]:
    """The three base64url segments of a compact JWS of at most ``max_chars`` ASCII chars."""
    if not isinstance(token, str) or not token or len(token) > max_chars:
        raise TokenError("token missing or too large")
    parts = token.split(".")
    if len(parts) != 3 or not token.isascii():
        raise TokenError("token is not a compact JWS")
    return parts


def decode_segment(segment: str, what: str) -> bytes:
    """base64url-decode one segment; TokenError naming ``what`` (never the bytes)."""
    try:
        return b64url_decode(segment, what=what)
    except FormatError as exc:
        raise TokenError(f"token {what} is malformed") from exc


def split_jwt(
    token: str, *, max_chars: int = MAX_TOKEN_CHARS
) -> tuple[dict[str, Any], dict[str, Any], bytes, bytes]:
    """Parse ``header.payload.signature`` without verifying: (header, payload, input, sig)."""
    parts = segments(token, max_chars=max_chars)
    header = json_object(decode_segment(parts[0], "header"), "header", max_chars=max_chars)
    payload = json_object(decode_segment(parts[1], "payload"), "payload", max_chars=max_chars)
    signature = decode_segment(parts[2], "signature")
    return header, payload, f"{parts[0]}.{parts[1]}".encode("ascii"), signature


def time_claim(payload: Mapping[str, Any], name: str, *, what: str = "token") -> int:
    """The NumericDate claim ``name``: an integer in ``[0, 2**53 - 1]``, else TokenError.

    RFC 7519 allows fractions; we do not, and refuse floats, ``NaN``, infinities, booleans
    and strings even under a valid signature, so a signer's bug cannot mint a token that
    never expires (every comparison with ``NaN`` is false).
    """
    value = payload.get(name)
    if type(value) is not int or not 0 <= value <= MAX_NUMERIC_DATE:
        raise TokenError(f"{what} claim {name!r} missing or not an integer time")
    return value
