"""RFC 8785 (JCS) canonical JSON: the only way bytes-to-be-hashed are produced from JSON.

The ``rfc8785`` package is pure Python and was the largest single cost of a KBS key
release (binding digest, claims digest, audit row hash, key-row MAC). Values made only of
exact ``dict``/``list``/``str``/``bool``/``None`` and integers in the I-JSON safe range,
whose object keys are ASCII, serialise identically with msgspec's JSON encoder and sorted
keys: key order by code point equals UTF-16 order for ASCII, both escape exactly ``"``,
``\\`` and the C0 controls (``\\b \\f \\n \\r \\t`` short forms, else lowercase
``\\u00xx``) and emit all other characters literally as UTF-8, and integers in that range
print as plain decimals. (msgspec takes a sixth of the C ``json`` encoder's time on a
mock-tdx claims document.) Anything else (floats, other types, non-ASCII keys, lone
surrogates) takes the ``rfc8785`` path, so the output is byte-identical either way
(property-tested against ``rfc8785``).
"""

from __future__ import annotations

import json
from typing import Any, Final

import msgspec
import rfc8785

_MAX_SAFE: Final = 2**53 - 1
_encoder: Final = msgspec.json.Encoder(order="sorted")
_compact: Final = msgspec.json.Encoder()


def is_plain_json(value: Any) -> bool:
    """True when ``value`` is made only of exact ``dict`` (ASCII ``str`` keys), ``list``,
    ``str``, ``bool``, ``None`` and integers in the I-JSON safe range: JSON that every
    encoder writes the same way (and, keys sorted, the RFC 8785 form)."""
    t = type(value)
    if t is str or t is bool or value is None:
        return True
    if t is int:
        return bool(-_MAX_SAFE <= value <= _MAX_SAFE)
    if t is dict:
        for k, v in value.items():
            if type(k) is not str or not k.isascii() or not is_plain_json(v):
                return False
        return True
    if t is list:
        return all(is_plain_json(v) for v in value)
    return False


def canonical_json(value: Any) -> bytes:
    """Serialize ``value`` as RFC 8785 canonical JSON bytes."""
    try:
        if is_plain_json(value):
            return _encoder.encode(value)
    except (RecursionError, UnicodeEncodeError):
        pass  # too deep or a lone surrogate: let rfc8785 produce its own answer or error
    return rfc8785.dumps(value)


def compact_json(value: Any) -> bytes:
    """Compact JSON (UTF-8, members in insertion order) of a value to sign or send.

    Plain values (:func:`is_plain_json`: every token, JWE header and response body the KBS
    writes) go through msgspec, a sixth of the ``json`` module's time on an EAR token;
    anything else through ``json`` with ``allow_nan=False`` (NaN and Infinity are not
    JSON, and no verifier here would accept them). Both write the same bytes for plain
    values; a lone surrogate is a ``UnicodeEncodeError`` either way.
    """
    if is_plain_json(value):
        return _compact.encode(value)
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
