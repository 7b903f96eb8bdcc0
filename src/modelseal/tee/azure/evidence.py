"""Azure vTPM evidence JSON, wire-compatible with Trustee's ``az-snp-vtpm``/``az-tdx-vtpm``.

Versions 1 and 2 (what guest-components' attesters send; 2 since the HCL ``user-data``
carries the report data)::

    {"version": 2,
     "tpm_quote": {"signature": hex RSASSA-SHA256 signature (raw, 256 B),
                   "message": hex TPMS_ATTEST,
                   "pcrs": [hex SHA-256 value of PCR 0..23]},
     "hcl_report": base64url (padded) HCL report,
     "vcek": base64url DER VCEK certificate}          # az-snp-vtpm
     "td_quote": base64url TD quote}                  # az-tdx-vtpm

Version 0 (no ``version`` member) has the same content as JSON byte arrays:
az-snp-vtpm ``{"quote": {"signature", "message", "pcrs"}, "report": [...],
"vcek": PEM text}``; az-tdx-vtpm ``{"tpm_quote": {...}, "hcl_report": [...],
"td_quote": [...]}``. Other members are ignored, as Trustee ignores them.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from modelseal._internal.encoding import b64url_decode
from modelseal.errors import EvidenceError, FormatError
from modelseal.tee.azure.hcl import MAX_HCL_REPORT

MAX_QUOTE = 64 * 1024
MAX_CERT = 16 * 1024
MAX_TPM = 4096
PCR_COUNT = 24
PCR_SIZE = 32
VERSIONS = (0, 1, 2)


@dataclass(frozen=True)
class TpmQuote:
    """The vTPM quote: raw signature, TPMS_ATTEST bytes and the 24 SHA-256 PCRs."""

    signature: bytes
    message: bytes
    pcrs: tuple[bytes, ...]


@dataclass(frozen=True)
class AzEvidence:
    """Decoded evidence; ``vcek`` (DER, or PEM in version 0) for SNP, ``td_quote`` for TDX."""

    version: int
    tpm_quote: TpmQuote
    hcl_report: bytes
    vcek: bytes | None = None
    td_quote: bytes | None = None


def _bytes(value: Any, what: str, limit: int) -> bytes:
    """A JSON byte array (version 0)."""
    if not isinstance(value, list) or not 0 < len(value) <= limit:
        raise EvidenceError(f"Azure evidence: {what} must be a byte array of 1..{limit}")
    try:
        return bytes(value)
    except (TypeError, ValueError):
        raise EvidenceError(f"Azure evidence: {what} must contain integers 0..255") from None


def _hex(value: Any, what: str, limit: int) -> bytes:
    if not isinstance(value, str) or not 0 < len(value) <= 2 * limit or len(value) % 2:
        raise EvidenceError(f"Azure evidence: {what} must be hex of 1..{limit} bytes")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise EvidenceError(f"Azure evidence: {what} is not hex") from None


def _b64url(value: Any, what: str, limit: int) -> bytes:
    if not isinstance(value, str) or not 0 < len(value) <= (limit * 4 + 2) // 3 + 2:
        raise EvidenceError(f"Azure evidence: {what} must be base64url of 1..{limit} bytes")
    try:
        return b64url_decode(value, what=f"Azure evidence: {what}")
    except FormatError as exc:
        raise EvidenceError(str(exc)) from None


def _pcrs(values: Any, decode: Any) -> tuple[bytes, ...]:
    if not isinstance(values, list) or len(values) != PCR_COUNT:
        raise EvidenceError(f"Azure evidence: tpm_quote.pcrs must list {PCR_COUNT} PCRs")
    out = tuple(decode(v, f"tpm_quote.pcrs[{i}]", PCR_SIZE) for i, v in enumerate(values))
    if any(len(p) != PCR_SIZE for p in out):
        raise EvidenceError(f"Azure evidence: every PCR must be {PCR_SIZE} bytes (SHA-256)")
    return out


def _tpm_quote(value: Any, decode: Any, what: str) -> TpmQuote:
    if not isinstance(value, Mapping):
        raise EvidenceError(f"Azure evidence: {what} must be an object")
    return TpmQuote(
        signature=decode(value.get("signature"), f"{what}.signature", 512),
        message=decode(value.get("message"), f"{what}.message", MAX_TPM),
        pcrs=_pcrs(value.get("pcrs"), decode),
    )


def _pem_text(value: Any) -> bytes:
    """Version 0 carries the VCEK as PEM text; the verifier loads PEM and DER alike."""
    if not isinstance(value, str) or len(value) > 2 * MAX_CERT or "-----BEGIN" not in value:
        raise EvidenceError("Azure evidence: vcek must be PEM text")
    try:
        return value.encode("ascii")
    except UnicodeEncodeError:
        raise EvidenceError("Azure evidence: vcek must be ASCII PEM text") from None


def parse_evidence(doc: Any, *, hardware: str) -> AzEvidence:
    """Decode either version for ``hardware`` (``"snp"`` or ``"tdx"``)."""
    if not isinstance(doc, Mapping):
        raise EvidenceError("Azure evidence must be a JSON object")
    version = doc.get("version", 0)
    if type(version) is not int or version not in VERSIONS:
        raise EvidenceError(f"Azure evidence version must be one of {VERSIONS}")
    if version == 0:
        quote_key, report_key = (
            ("quote", "report") if hardware == "snp" else ("tpm_quote", "hcl_report")
        )
        quote = _tpm_quote(doc.get(quote_key), _bytes, quote_key)
        hcl = _bytes(doc.get(report_key), report_key, MAX_HCL_REPORT)
        if hardware == "snp":
            return AzEvidence(0, quote, hcl, vcek=_pem_text(doc.get("vcek")))
        return AzEvidence(
            0, quote, hcl, td_quote=_bytes(doc.get("td_quote"), "td_quote", MAX_QUOTE)
        )
    quote = _tpm_quote(doc.get("tpm_quote"), _hex, "tpm_quote")
    hcl = _b64url(doc.get("hcl_report"), "hcl_report", MAX_HCL_REPORT)
    if hardware == "snp":
        return AzEvidence(version, quote, hcl, vcek=_b64url(doc.get("vcek"), "vcek", MAX_CERT))
    return AzEvidence(
        version, quote, hcl, td_quote=_b64url(doc.get("td_quote"), "td_quote", MAX_QUOTE)
    )


def build_evidence(
    *,
    signature: bytes,
    message: bytes,
    pcrs: Sequence[bytes],
    hcl_report: bytes,
    vcek: bytes | None = None,
    td_quote: bytes | None = None,
) -> dict[str, Any]:
    """Version-2 evidence as guest-components' attesters send it (padded base64url)."""

    def url(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).decode("ascii")

    out: dict[str, Any] = {
        "version": 2,
        "tpm_quote": {
            "signature": signature.hex(),
            "message": message.hex(),
            "pcrs": [p.hex() for p in pcrs],
        },
        "hcl_report": url(hcl_report),
    }
    if vcek is not None:
        out["vcek"] = url(vcek)
    if td_quote is not None:
        out["td_quote"] = url(td_quote)
    return out
