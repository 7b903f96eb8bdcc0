"""TPM evidence JSON: Trustee's ``tpm`` shape plus optional modelseal members.

Trustee (guest-components ``attester/src/tpm``)::

    {"ak_public": std-base64 SubjectPublicKeyInfo DER,
     "tpm_quote": {"message": std-base64 TPMS_ATTEST,
                   "signature": std-base64 TPMT_SIGNATURE,
                   "pcrs": [hex value of each selected PCR, in selection order]}}

Optional members (ignored by Trustee, used by modelseal when present):
``ak_tpm_public`` (std-base64 TPM2B_PUBLIC of the AK: its attributes are checked),
``ak_certs`` (std-base64 DER certificates, AK certificate first) and ``event_log``
(std-base64 TCG2 binary log, e.g. ``binary_bios_measurements``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from modelseal._internal.encoding import b64_decode, b64_encode
from modelseal.errors import EvidenceError, FormatError

MAX_SMALL = 4096
MAX_EVENT_LOG = 16 * 1024 * 1024
MAX_CERTS = 6
MAX_PCRS = 24


@dataclass(frozen=True)
class TpmEvidence:
    ak_public: bytes
    message: bytes
    signature: bytes
    pcrs: list[bytes]
    ak_tpm_public: bytes | None = None
    ak_certs: tuple[bytes, ...] = ()
    event_log: bytes | None = None


def _b64(value: Any, what: str, limit: int) -> bytes:
    if not isinstance(value, str) or len(value) > limit * 4 // 3 + 4:
        raise EvidenceError(f"TPM evidence: {what} must be a base64 string of at most {limit} B")
    try:
        return b64_decode(value, what=what)
    except FormatError as exc:
        raise EvidenceError(f"TPM evidence: {exc}") from None


def _hex(value: Any, what: str) -> bytes:
    if not isinstance(value, str) or len(value) > 128 or len(value) % 2:
        raise EvidenceError(f"TPM evidence: {what} must be a hex digest")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise EvidenceError(f"TPM evidence: {what} must be a hex digest") from None


def parse_evidence(doc: Any) -> TpmEvidence:
    """Validate the JSON shape and decode every member; ``EvidenceError`` on anything odd."""
    if not isinstance(doc, Mapping):
        raise EvidenceError("TPM evidence must be a JSON object")
    quote = doc.get("tpm_quote")
    if not isinstance(quote, Mapping):
        raise EvidenceError("TPM evidence: tpm_quote must be an object")
    pcrs = quote.get("pcrs")
    if not isinstance(pcrs, list) or not 0 < len(pcrs) <= MAX_PCRS:
        raise EvidenceError(f"TPM evidence: tpm_quote.pcrs must list 1..{MAX_PCRS} values")
    certs = doc.get("ak_certs") or []
    if not isinstance(certs, list) or len(certs) > MAX_CERTS:
        raise EvidenceError(f"TPM evidence: ak_certs must be a list of at most {MAX_CERTS}")
    ak_tpm = doc.get("ak_tpm_public")
    log = doc.get("event_log")
    return TpmEvidence(
        ak_public=_b64(doc.get("ak_public"), "ak_public", MAX_SMALL),
        message=_b64(quote.get("message"), "tpm_quote.message", MAX_SMALL),
        signature=_b64(quote.get("signature"), "tpm_quote.signature", MAX_SMALL),
        pcrs=[_hex(v, f"tpm_quote.pcrs[{i}]") for i, v in enumerate(pcrs)],
        ak_tpm_public=None if ak_tpm is None else _b64(ak_tpm, "ak_tpm_public", MAX_SMALL),
        ak_certs=tuple(_b64(c, "ak_certs[]", MAX_SMALL) for c in certs),
        event_log=None if log is None else _b64(log, "event_log", MAX_EVENT_LOG),
    )


def build_evidence(
    *,
    ak_public: bytes,
    message: bytes,
    signature: bytes,
    pcrs: Sequence[bytes],
    ak_tpm_public: bytes | None = None,
    ak_certs: Sequence[bytes] = (),
    event_log: bytes | None = None,
) -> dict[str, Any]:
    """The JSON the attester sends (inverse of :func:`parse_evidence`)."""
    out: dict[str, Any] = {
        "ak_public": b64_encode(ak_public),
        "tpm_quote": {
            "message": b64_encode(message),
            "signature": b64_encode(signature),
            "pcrs": [p.hex() for p in pcrs],
        },
    }
    if ak_tpm_public is not None:
        out["ak_tpm_public"] = b64_encode(ak_tpm_public)
    if ak_certs:
        out["ak_certs"] = [b64_encode(c) for c in ak_certs]
    if event_log is not None:
        out["event_log"] = b64_encode(event_log)
    return out
