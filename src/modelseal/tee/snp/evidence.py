"""SNP evidence JSON, wire-compatible with Trustee's ``SnpEvidence``.

Trustee (guest-components ``attester/src/snp``) sends the serde form of virtee/sev's
``AttestationReport`` plus an optional certificate table::

    {"attestation_report": {"version": 3, "guest_svn": 0, "policy": 196608,
                            "family_id": [16 ints], ..., "current_tcb": {"fmc": null,
                            "bootloader": 10, "tee": 0, "snp": 23, "microcode": 25},
                            ..., "signature": {"r": [72 ints], "s": [72 ints]}},
     "cert_chain": [{"cert_type": "VCEK", "data": [DER bytes as ints]}, ...] | null}

The verifier needs the exact signed bytes, so the JSON object is re-encoded into the
binary layout (reserved bytes zero, as the firmware writes them) and parsed strictly.
As a modelseal extension ``attestation_report`` may also be the standard-base64 raw report.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from modelseal._internal.encoding import b64_decode
from modelseal.errors import EvidenceError, FormatError
from modelseal.tee.snp.report import (
    REPORT_SIZE,
    AttestationReport,
    Product,
    TcbVersion,
    parse_report,
    product_from_cpuid,
)

#: GUIDs of the SNP extended-report certificate table (GHCB spec / sev-guest ABI).
CERT_GUIDS: dict[str, str] = {
    "c0b406a4-a803-4952-9743-3fb6014cd0ae": "ARK",
    "4ab7b379-bbac-4fe4-a02f-05aef327c782": "ASK",
    "63da758d-e664-4564-adc5-f4b93be8accd": "VCEK",
    "a8074bc2-a25a-483e-aae6-39c045a0b8a1": "VLEK",
    "92f81bc3-5811-4d3d-97ff-d19f88dc67ea": "CRL",
}
MAX_CERT_TABLE = 64 * 1024
MAX_CERTS = 16


@dataclass(frozen=True)
class CertEntry:
    """One certificate-table entry: Trustee ``cert_type`` name (or a GUID) and DER bytes."""

    cert_type: str
    data: bytes


def _byte_array(value: Any, size: int, what: str) -> bytes:
    if not isinstance(value, list) or len(value) != size:
        raise EvidenceError(f"SNP evidence: {what} must be an array of {size} bytes")
    try:
        return bytes(value)  # rejects non-integers and values outside 0..255
    except (TypeError, ValueError):
        raise EvidenceError(f"SNP evidence: {what} must contain integers 0..255") from None


def _uint(value: Any, bits: int, what: str) -> int:
    if type(value) is not int or not 0 <= value < (1 << bits):
        raise EvidenceError(f"SNP evidence: {what} must be an unsigned {bits}-bit integer")
    return value


def _tcb(value: Any, what: str, product: Product | None) -> bytes:
    if not isinstance(value, Mapping):
        raise EvidenceError(f"SNP evidence: {what} must be an object")
    fmc = value.get("fmc")
    tcb = TcbVersion(
        bootloader=_uint(value.get("bootloader"), 8, f"{what}.bootloader"),
        tee=_uint(value.get("tee"), 8, f"{what}.tee"),
        snp=_uint(value.get("snp"), 8, f"{what}.snp"),
        microcode=_uint(value.get("microcode"), 8, f"{what}.microcode"),
        fmc=None if fmc is None else _uint(fmc, 8, f"{what}.fmc"),
    )
    if product is not Product.TURIN and tcb.fmc is not None:
        raise EvidenceError(f"SNP evidence: {what}.fmc is only defined on Turin")
    return tcb.encode(product)


def _version(value: Any, what: str) -> bytes:
    if not isinstance(value, Mapping):
        raise EvidenceError(f"SNP evidence: {what} must be an object")
    return bytes(
        [
            _uint(value.get("build"), 8, f"{what}.build"),
            _uint(value.get("minor"), 8, f"{what}.minor"),
            _uint(value.get("major"), 8, f"{what}.major"),
            0,
        ]
    )


def report_bytes_from_json(obj: Any) -> bytes:
    """Re-encode Trustee's JSON report (or a base64 string) into the 1184-byte layout."""
    if isinstance(obj, str):
        try:
            raw = b64_decode(obj, what="attestation_report")
        except FormatError as exc:
            raise EvidenceError(str(exc)) from None
        if len(raw) != REPORT_SIZE:
            raise EvidenceError(f"SNP report must be {REPORT_SIZE} bytes, got {len(raw)}")
        return raw
    if not isinstance(obj, Mapping):
        raise EvidenceError("SNP evidence: attestation_report must be an object")
    version = _uint(obj.get("version"), 32, "version")
    cpuid = [obj.get("cpuid_fam_id"), obj.get("cpuid_mod_id"), obj.get("cpuid_step")]
    product: Product | None = None
    cpuid_bytes = b""
    if version >= 3:
        cpuid_bytes = bytes(_uint(v, 8, "cpuid") for v in cpuid)
        product = product_from_cpuid(cpuid_bytes[0], cpuid_bytes[1])
    elif any(v is not None for v in cpuid):
        raise EvidenceError("SNP evidence: a v2 report has no CPUID fields")
    out = bytearray(REPORT_SIZE)
    struct.pack_into(
        "<IIQ",
        out,
        0,
        version,
        _uint(obj.get("guest_svn"), 32, "guest_svn"),
        _uint(obj.get("policy"), 64, "policy"),
    )
    out[0x10:0x20] = _byte_array(obj.get("family_id"), 16, "family_id")
    out[0x20:0x30] = _byte_array(obj.get("image_id"), 16, "image_id")
    struct.pack_into(
        "<II",
        out,
        0x30,
        _uint(obj.get("vmpl"), 32, "vmpl"),
        _uint(obj.get("sig_algo"), 32, "sig_algo"),
    )
    out[0x38:0x40] = _tcb(obj.get("current_tcb"), "current_tcb", product)
    struct.pack_into(
        "<QI",
        out,
        0x40,
        _uint(obj.get("plat_info"), 64, "plat_info"),
        _uint(obj.get("key_info"), 32, "key_info"),
    )
    out[0x50:0x90] = _byte_array(obj.get("report_data"), 64, "report_data")
    out[0x90:0xC0] = _byte_array(obj.get("measurement"), 48, "measurement")
    out[0xC0:0xE0] = _byte_array(obj.get("host_data"), 32, "host_data")
    out[0xE0:0x110] = _byte_array(obj.get("id_key_digest"), 48, "id_key_digest")
    out[0x110:0x140] = _byte_array(obj.get("author_key_digest"), 48, "author_key_digest")
    out[0x140:0x160] = _byte_array(obj.get("report_id"), 32, "report_id")
    out[0x160:0x180] = _byte_array(obj.get("report_id_ma"), 32, "report_id_ma")
    out[0x180:0x188] = _tcb(obj.get("reported_tcb"), "reported_tcb", product)
    if version >= 3:
        out[0x188:0x18B] = cpuid_bytes
    out[0x1A0:0x1E0] = _byte_array(obj.get("chip_id"), 64, "chip_id")
    out[0x1E0:0x1E8] = _tcb(obj.get("committed_tcb"), "committed_tcb", product)
    out[0x1E8:0x1EC] = _version(obj.get("current"), "current")
    out[0x1EC:0x1F0] = _version(obj.get("committed"), "committed")
    out[0x1F0:0x1F8] = _tcb(obj.get("launch_tcb"), "launch_tcb", product)
    launch_mit, current_mit = obj.get("launch_mit_vector"), obj.get("current_mit_vector")
    if version >= 5:
        struct.pack_into(
            "<QQ",
            out,
            0x1F8,
            _uint(launch_mit, 64, "launch_mit_vector"),
            _uint(current_mit, 64, "current_mit_vector"),
        )
    elif launch_mit is not None or current_mit is not None:
        raise EvidenceError("SNP evidence: mitigation vectors exist only in v5 reports")
    sig = obj.get("signature")
    if not isinstance(sig, Mapping):
        raise EvidenceError("SNP evidence: signature must be an object with r and s")
    out[0x2A0:0x2E8] = _byte_array(sig.get("r"), 72, "signature.r")
    out[0x2E8:0x330] = _byte_array(sig.get("s"), 72, "signature.s")
    return bytes(out)


def _tcb_json(tcb: TcbVersion) -> dict[str, int | None]:
    return {
        "fmc": tcb.fmc,
        "bootloader": tcb.bootloader,
        "tee": tcb.tee,
        "snp": tcb.snp,
        "microcode": tcb.microcode,
    }


def report_to_json(report: AttestationReport) -> dict[str, Any]:
    """The serde form Trustee's verifier deserializes (field names of virtee/sev)."""
    out: dict[str, Any] = {
        "version": report.version,
        "guest_svn": report.guest_svn,
        "policy": report.policy,
        "family_id": list(report.family_id),
        "image_id": list(report.image_id),
        "vmpl": report.vmpl,
        "sig_algo": report.signature_algo,
        "current_tcb": _tcb_json(report.current_tcb),
        "plat_info": report.platform_info,
        "key_info": report.flags,
        "report_data": list(report.report_data),
        "measurement": list(report.measurement),
        "host_data": list(report.host_data),
        "id_key_digest": list(report.id_key_digest),
        "author_key_digest": list(report.author_key_digest),
        "report_id": list(report.report_id),
        "report_id_ma": list(report.report_id_ma),
        "reported_tcb": _tcb_json(report.reported_tcb),
        "cpuid_fam_id": report.cpuid_fam_id,
        "cpuid_mod_id": report.cpuid_mod_id,
        "cpuid_step": report.cpuid_step,
        "chip_id": list(report.chip_id),
        "committed_tcb": _tcb_json(report.committed_tcb),
        "current": {
            "major": report.current_version.major,
            "minor": report.current_version.minor,
            "build": report.current_version.build,
        },
        "committed": {
            "major": report.committed_version.major,
            "minor": report.committed_version.minor,
            "build": report.committed_version.build,
        },
        "launch_tcb": _tcb_json(report.launch_tcb),
        "launch_mit_vector": report.launch_mit_vector,
        "current_mit_vector": report.current_mit_vector,
        "signature": {"r": list(report.signature_r), "s": list(report.signature_s)},
    }
    return out


def cert_chain_from_json(value: Any) -> list[CertEntry]:
    """Parse Trustee's ``cert_chain`` (``null`` or a list of ``{cert_type, data}``)."""
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > MAX_CERTS:
        raise EvidenceError(f"SNP evidence: cert_chain must be a list of at most {MAX_CERTS}")
    entries = []
    for i, item in enumerate(value):
        if not isinstance(item, Mapping):
            raise EvidenceError(f"SNP evidence: cert_chain[{i}] must be an object")
        kind = item.get("cert_type")
        if isinstance(kind, Mapping) and set(kind) == {"OTHER"}:
            kind = str(kind["OTHER"])
        if not isinstance(kind, str):
            raise EvidenceError(f"SNP evidence: cert_chain[{i}].cert_type must be a string")
        data = item.get("data")
        if not isinstance(data, list) or not 0 < len(data) <= MAX_CERT_TABLE:
            raise EvidenceError(f"SNP evidence: cert_chain[{i}].data must be a byte array")
        entries.append(CertEntry(kind, _byte_array(data, len(data), f"cert_chain[{i}].data")))
    return entries


def cert_chain_to_json(entries: Sequence[CertEntry]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for entry in entries:
        kind: Any = entry.cert_type
        if kind not in CERT_GUIDS.values():
            kind = {"OTHER": kind}
        out.append({"cert_type": kind, "data": list(entry.data)})
    return out


def parse_cert_table(blob: bytes) -> list[CertEntry]:
    """Parse the binary certificate table of SNP_GET_EXT_REPORT / configfs-tsm ``auxblob``.

    Entries are (GUID 16 B little-endian-mixed, offset u32, length u32) terminated by an
    all-zero entry; offsets are relative to the start of the table.
    """
    if len(blob) > MAX_CERT_TABLE:
        raise EvidenceError("SNP certificate table is too large")
    entries: list[CertEntry] = []
    pos = 0
    while True:
        if pos + 24 > len(blob):
            raise EvidenceError("SNP certificate table is truncated (no terminator)")
        guid = uuid.UUID(bytes_le=blob[pos : pos + 16])
        offset, length = struct.unpack_from("<II", blob, pos + 16)
        pos += 24
        if guid.int == 0 and offset == 0 and length == 0:
            return entries
        if len(entries) >= MAX_CERTS:
            raise EvidenceError("SNP certificate table has too many entries")
        if length == 0 or offset + length > len(blob) or offset < pos:
            raise EvidenceError("SNP certificate table entry points outside the table")
        name = CERT_GUIDS.get(str(guid), str(guid))
        entries.append(CertEntry(name, blob[offset : offset + length]))


def build_evidence(report_raw: bytes, certs: Sequence[CertEntry] = ()) -> dict[str, Any]:
    """Evidence JSON from a raw report (+ certificate table), as the attester sends it."""
    report = parse_report(report_raw)
    return {
        "attestation_report": report_to_json(report),
        "cert_chain": cert_chain_to_json(certs) if certs else None,
    }
