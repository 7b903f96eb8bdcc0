"""NVIDIA device evidence as Trustee and guest-components exchange it.

``{"device_evidence_list": [{"arch": "HOPPER", "uuid": "...", "evidence": <report hex or
base64>, "certificate": <base64 of the PEM chain, leaf first>}, ...]}``. modelseal's
attester adds ``"cc_mode"`` (``on``/``devtools``/``off`` as NVML reports it), which
Trustee ignores. Inside composite evidence the whole document is bound by the CPU TEE's
report data, so such guest-reported fields are vouched for by the attested CPU TEE.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from modelseal._internal.encoding import b64_encode, hex_decode
from modelseal.errors import EvidenceError, FormatError
from modelseal.tee.nvidia.report import MAX_REPORT

#: Devices one evidence document may list (an 8-GPU board plus 4 NVSwitches, with room).
MAX_DEVICES: Final = 16
#: The architectures this verifier checks locally.
ARCHITECTURES: Final = {"hopper": "Hopper"}
CC_MODES: Final = ("on", "devtools", "off")
_MAX_TEXT: Final = 4 * MAX_REPORT


@dataclass(frozen=True)
class DeviceEvidence:
    """One device's report, its chain (PEM, None: use the configured one) and labels."""

    arch: str
    uuid: str
    report: bytes
    chain_pem: bytes | None
    cc_mode: str | None


def device_entries(evidence: Any) -> list[Mapping[str, Any]]:
    """The device entries of a document (a single entry is accepted as a list of one)."""
    if isinstance(evidence, Mapping) and "device_evidence_list" in evidence:
        entries = evidence["device_evidence_list"]
        if not isinstance(entries, list):
            raise EvidenceError("device_evidence_list must be a list")
    elif isinstance(evidence, Mapping):
        entries = [evidence]
    else:
        raise EvidenceError("NVIDIA evidence must be a JSON object")
    if not entries:
        raise EvidenceError("NVIDIA evidence lists no device")
    if len(entries) > MAX_DEVICES:
        raise EvidenceError(f"NVIDIA evidence lists more than {MAX_DEVICES} devices")
    for entry in entries:
        if not isinstance(entry, Mapping):
            raise EvidenceError("each NVIDIA device evidence must be a JSON object")
    return entries


def _text(entry: Mapping[str, Any], key: str, *, required: bool = True) -> str | None:
    value = entry.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise EvidenceError(f"NVIDIA device evidence {key!r} must be a string")
    if len(value) > _MAX_TEXT:
        raise EvidenceError(f"NVIDIA device evidence {key!r} is too long")
    return value


def parse_device(entry: Mapping[str, Any]) -> DeviceEvidence:
    """One entry; the report may be hex (the original encoding) or standard base64."""
    arch_text = _text(entry, "arch") or ""
    arch = ARCHITECTURES.get(arch_text.lower())
    if arch is None:
        raise EvidenceError(
            f"NVIDIA architecture {arch_text[:16]!r} is not verified locally (only Hopper)"
        )
    uuid = _text(entry, "uuid", required=False) or "unknown"
    report = _decode_report(_text(entry, "evidence") or "")
    cert = _text(entry, "certificate", required=False)
    chain = None
    if cert:
        try:
            chain = base64.b64decode(cert, validate=True)
        except (binascii.Error, ValueError):
            raise EvidenceError("NVIDIA device certificate is not base64") from None
    mode = _text(entry, "cc_mode", required=False)
    if mode is not None and mode not in CC_MODES:
        raise EvidenceError(f"NVIDIA cc_mode must be one of {', '.join(CC_MODES)}")
    return DeviceEvidence(arch, uuid[:128], report, chain, mode)


def _decode_report(text: str) -> bytes:
    try:
        return hex_decode(text, what="NVIDIA report")
    except FormatError:
        pass
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise EvidenceError("NVIDIA report is neither hex nor base64") from None


def build_device(
    report: bytes,
    chain_pem: bytes | None,
    *,
    uuid: str = "unknown",
    cc_mode: str | None = None,
) -> dict[str, Any]:
    """One device entry in Trustee's shape (report as hex, chain as base64 PEM)."""
    entry: dict[str, Any] = {"arch": "HOPPER", "uuid": uuid, "evidence": report.hex()}
    if chain_pem is not None:
        entry["certificate"] = b64_encode(chain_pem)
    if cc_mode is not None:
        entry["cc_mode"] = cc_mode
    return entry


def build_evidence(devices: list[dict[str, Any]]) -> dict[str, Any]:
    """The evidence document listing ``devices``."""
    return {"device_evidence_list": devices}
