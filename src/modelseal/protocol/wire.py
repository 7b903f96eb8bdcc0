"""The base of the wire models every process shares (model info, RCAR messages).

msgspec, not pydantic: these models run inside the TEE on the loader's start-up path, where
importing pydantic and building its validators costs ~0.2 s of a ~0.4 s start
(docs/benchmarks.md); msgspec validates the same constraints (types, lengths, patterns,
``__post_init__`` checks) for ~15 ms. Server-only models (KBS admin API, policies) stay
pydantic. Decoding is strict: no string-to-number coercion, unknown fields ignored unless a
model forbids them.

Every JSON text passes the byte and depth caps of ``_internal/bounded.py`` before msgspec
sees it: msgspec (like the standard ``json`` module) decodes nested arrays and objects
recursively and would otherwise stop only at the interpreter's recursion limit, with a
``RecursionError`` no caller expects from a decoder. A document over a cap is a
``WireError`` like any other malformed body, so it ends in the caller's documented error.
"""

from __future__ import annotations

import re
from typing import Any, Self

import msgspec

from modelseal._internal.bounded import MAX_DEPTH, check_json
from modelseal.errors import FormatError

__all__ = ["MAX_JSON_BYTES", "WireError", "WireModel", "decode_json", "describe"]

#: raised by :meth:`WireModel.from_json` (malformed JSON or invalid fields) and
#: :meth:`WireModel.from_data` (invalid fields); report it with :func:`describe`
WireError = msgspec.DecodeError

#: Default byte cap of :meth:`WireModel.from_json`; callers pass tighter ones.
MAX_JSON_BYTES = 64 * 1024 * 1024

_QUOTED = re.compile(r"'(?:[^'\\]|\\.)*'")
_TOO_DEEP = "JSON document nested too deeply"


def _capped(data: bytes | str, max_bytes: int, max_depth: int) -> bytes:
    try:
        return check_json(data, what="JSON document", max_bytes=max_bytes, max_depth=max_depth)
    except FormatError as exc:
        raise WireError(str(exc)) from None


def decode_json(
    data: bytes | str, *, max_bytes: int = MAX_JSON_BYTES, max_depth: int = MAX_DEPTH
) -> Any:
    """Decode a JSON document of any shape (``WireError`` if malformed, too large or nested
    too deeply)."""
    raw = _capped(data, max_bytes, max_depth)
    try:
        return msgspec.json.decode(raw)
    except RecursionError:
        raise WireError(_TOO_DEEP) from None


def describe(exc: WireError) -> str:
    """What is wrong and where (``$.files[0].sealed_size``), without the offending value.

    msgspec quotes a rejected enum value in its message; values come from untrusted peers
    and must not reach logs or errors unbounded.
    """
    return _QUOTED.sub("'…'", str(exc))[:300]


class WireModel(msgspec.Struct, frozen=True, kw_only=True):
    """A frozen, validated wire document; fields encode in declaration order."""

    @classmethod
    def from_json(
        cls, data: bytes | str, *, max_bytes: int = MAX_JSON_BYTES, max_depth: int = MAX_DEPTH
    ) -> Self:
        """Decode and validate a JSON document (``WireError`` on any problem, caps included)."""
        raw = _capped(data, max_bytes, max_depth)
        try:
            return msgspec.json.decode(raw, type=cls)
        except RecursionError:  # only if the caller's stack is already nearly exhausted
            raise WireError(_TOO_DEEP) from None

    @classmethod
    def from_data(cls, data: Any) -> Self:
        """Validate decoded JSON data (dicts, lists, ...; ``WireError`` on any problem)."""
        try:
            return msgspec.convert(data, type=cls)
        except RecursionError:
            raise WireError(_TOO_DEEP) from None

    def to_data(self) -> dict[str, Any]:
        """The JSON-ready ``dict`` of this model (wire field names)."""
        data: dict[str, Any] = msgspec.to_builtins(self)
        return data

    def to_json(self, *, indent: int = 0) -> bytes:
        """The JSON encoding of this model (wire field names)."""
        raw = msgspec.json.encode(self)
        return msgspec.json.format(raw, indent=indent) if indent else raw
