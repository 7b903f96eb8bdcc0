"""TDX evidence as Trustee's guest attester sends it, and lenient operator input forms.

Wire shape (``primary_evidence`` of the KBS attest request, CoCo guest-components
``attester/src/tdx``)::

    {"quote": "<std base64 TD quote>",
     "cc_eventlog": "<std base64 CCEL log area>" | null,
     "aa_eventlog": "<attestation-agent runtime event log text>" | null}

Other members are accepted but not interpreted (they are named in the claims' ``extra``).
Operators may also hand ``modelseal evidence verify`` a raw binary quote or a hex dump
(with or without ``0x``); :func:`decode_evidence` accepts all of these.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from modelseal._internal.encoding import b64_decode, b64_encode, hex_decode
from modelseal.errors import EvidenceError, FormatError

#: Largest evidence document accepted (quote + a 1 MiB event log, base64-encoded).
MAX_EVIDENCE_BYTES = 4 * 1024 * 1024

_KNOWN = frozenset({"quote", "cc_eventlog", "aa_eventlog"})
_HEX = re.compile(r"^\s*(0x)?[0-9a-fA-F\s]+$")


@dataclass(frozen=True)
class TdxEvidence:
    quote: bytes
    cc_eventlog: bytes | None = None
    aa_eventlog: str | None = None
    #: members of the evidence object that were not interpreted
    ignored: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "quote": b64_encode(self.quote),
            "cc_eventlog": b64_encode(self.cc_eventlog) if self.cc_eventlog else None,
            "aa_eventlog": self.aa_eventlog,
        }


def _from_mapping(value: dict[str, Any]) -> TdxEvidence:
    # Members we do not know (newer guests add e.g. device evidence) are not verified and
    # therefore not used; they are only named in the claims for the audit log.
    unknown = tuple(sorted(str(k)[:64] for k in set(value) - _KNOWN))
    if len(unknown) > 16:
        raise EvidenceError("TDX evidence has too many unknown members")
    quote = value.get("quote")
    if not isinstance(quote, str):
        raise EvidenceError("TDX evidence: 'quote' must be a base64 string")
    ccel = value.get("cc_eventlog")
    if ccel is not None and not isinstance(ccel, str):
        raise EvidenceError("TDX evidence: 'cc_eventlog' must be a base64 string or null")
    aael = value.get("aa_eventlog")
    if aael is not None and not isinstance(aael, str):
        raise EvidenceError("TDX evidence: 'aa_eventlog' must be a string or null")
    try:
        return TdxEvidence(
            quote=b64_decode(quote, what="TDX quote"),
            cc_eventlog=b64_decode(ccel, what="CC event log") if ccel else None,
            aa_eventlog=aael or None,
            ignored=unknown,
        )
    except FormatError as exc:
        raise EvidenceError(str(exc)) from exc


def _json(text: str) -> Any:
    """``json.loads`` whose every failure, deep nesting included, is an ``EvidenceError``."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:  # the C decoder recurses per nesting level
        raise EvidenceError("evidence: invalid JSON") from exc


def decode_evidence(value: Any) -> TdxEvidence:
    """Evidence from the wire JSON value, JSON text, hex text, or raw quote bytes."""
    if isinstance(value, dict):
        return _from_mapping(value)
    if isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
        if len(data) > MAX_EVIDENCE_BYTES:
            raise EvidenceError("evidence too large")
        stripped = data.strip()
        if stripped[:1] == b"{" or stripped[:1] == b'"':
            try:
                return decode_evidence(stripped.decode("utf-8"))
            except UnicodeDecodeError as exc:
                raise EvidenceError("evidence: invalid UTF-8 JSON") from exc
        # A DCAP quote starts with a small little-endian version number (3, 4, 5), so
        # its first byte is never an ASCII hex digit: the text/binary guess is unambiguous.
        if stripped and stripped[:1] in b"0123456789abcdefABCDEF":
            try:
                return decode_evidence(stripped.decode("ascii"))
            except UnicodeDecodeError:
                pass
        return TdxEvidence(quote=data)
    if isinstance(value, str):
        if len(value) > MAX_EVIDENCE_BYTES:
            raise EvidenceError("evidence too large")
        text = value.strip()
        if text.startswith("{"):
            parsed = _json(text)
            if not isinstance(parsed, dict):
                raise EvidenceError("evidence JSON must be an object")
            return _from_mapping(parsed)
        if text.startswith('"'):
            inner = _json(text)
            if not isinstance(inner, str):
                raise EvidenceError("evidence JSON string expected")
            text = inner.strip()
        if _HEX.fullmatch(text):
            try:
                return TdxEvidence(quote=hex_decode(text, what="TDX quote"))
            except FormatError as exc:
                raise EvidenceError(str(exc)) from exc
        try:
            return TdxEvidence(quote=b64_decode(text, what="TDX quote"))
        except FormatError as exc:
            raise EvidenceError("evidence is neither JSON, hex nor base64") from exc
    raise EvidenceError(f"unsupported evidence type {type(value).__name__}")
