"""Strict parser of the NVIDIA Hopper attestation report: an SPDM 1.1 GET_MEASUREMENTS
request followed by the device's signed MEASUREMENTS response.

Layout (all integers little-endian)::

    request   (37 B)  version 0x11 | code 0xE0 | param1 (bit 0: signature requested)
                      | param2 (0xFF: all measurements) | nonce (32 B) | slot id
    response          version 0x11 | code 0x60 | param1 | param2 (slot id in bits 0-3)
                      | number of blocks (u8) | record length (u24)
                      | record: blocks of index (u8) | spec (u8, 0x01 = DMTF) | size (u16)
                        | DMTF type (u8) | value size (u16) | value
                      | responder nonce (32 B) | opaque length (u16) | opaque TLVs
                      | signature (96 B, ECDSA P-384 r || s, big-endian)

The signature covers every byte before it (request and response, the SPDM L1/L2
transcript of a single exchange). Bytes after the signature are not signed: a device
may pad the buffer it returns with zeros, anything else there is refused.

Opaque data is NVIDIA's TLV list (type u16, size u16, value). Each known type is decoded
exactly as Trustee's local verifier decodes it, so claims are the same names and values a
Trustee policy sees; unknown or repeated types, an item running past the end and a report
without both the driver and the VBIOS version are refused. Every failure is an
``EvidenceError`` naming the field; nothing here allocates more than the input's size.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from modelseal.errors import EvidenceError

#: SPDM version 1.1, the only one Hopper firmware speaks in these reports.
SPDM_VERSION: Final = 0x11
GET_MEASUREMENTS: Final = 0xE0
MEASUREMENTS: Final = 0x60
NONCE_SIZE: Final = 32
REQUEST_SIZE: Final = 4 + NONCE_SIZE + 1
SIGNATURE_SIZE: Final = 96
#: DMTF measurement specification (bit 0 of MeasurementSpecification).
DMTF_SPEC: Final = 0x01
#: A report is about 4 KiB; 64 KiB bounds any honest one with room to spare.
MAX_REPORT: Final = 64 * 1024
#: Zero bytes a device may leave after the signature (one seen in a real report).
MAX_TRAILING_PADDING: Final = 16

#: NVDEC0 status byte values (opaque type 11) as NVIDIA's verifier reads them.
NVDEC_ENABLED: Final = 0xAA
NVDEC_DISABLED: Final = 0x55

#: opaque type -> claim name (Trustee's and nvtrust's spelling)
OPAQUE_NAMES: Final[Mapping[int, str]] = {
    1: "cert_issuer_name",
    2: "cert_authority_key_identifier",
    3: "driver_version",
    4: "gpu_info",
    5: "id_sku",
    6: "vbios_version",
    7: "manufacturer_id",
    8: "tamper_detection",
    9: "smc",
    10: "vpr",
    11: "nvdec0_status",
    12: "measurement_count",
    13: "cpr_info",
    14: "board_id",
    15: "chip_sku",
    16: "chip_sku_mod",
    17: "project",
    18: "project_sku",
    19: "project_sku_mod",
    20: "fwid",
    21: "protected_pcie_status",
    22: "switch_pdi",
    23: "floorswept_ports",
    24: "position_id",
    25: "lock_switch_status",
    32: "gpu_link_conn",
    33: "sys_enable_status",
    34: "opaque_data_version",
    35: "chip_info",
    36: "feature_flag",
}
#: types whose value is NUL-terminated text
_TEXT_TYPES: Final = frozenset({3, 11, 15, 16, 17, 18, 21, 35})
_FEATURES: Final = {0: "SPT", 1: "MPT", 2: "PPCIE"}


@dataclass(frozen=True)
class MeasurementBlock:
    """One DMTF measurement block: its index (1-based), DMTF type and value."""

    index: int
    dmtf_type: int
    value: bytes


@dataclass(frozen=True)
class HopperReport:
    """A parsed report; ``signed_bytes`` is exactly what the signature covers."""

    request_param1: int
    request_param2: int
    nonce: bytes
    slot_id: int
    response_param1: int
    response_param2: int
    blocks: tuple[MeasurementBlock, ...]
    responder_nonce: bytes
    opaque: Mapping[str, Any]
    opaque_raw: Mapping[int, bytes]
    signed_bytes: bytes
    signature: bytes

    @property
    def measurements(self) -> dict[int, bytes]:
        """Block index -> measurement value."""
        return {b.index: b.value for b in self.blocks}

    @property
    def driver_version(self) -> str:
        return str(self.opaque["driver_version"])

    @property
    def vbios_version(self) -> str:
        return str(self.opaque["vbios_version"])

    @property
    def fwid(self) -> bytes | None:
        """The firmware ID the leaf certificate must carry (opaque type 20), if present."""
        return self.opaque_raw.get(20)

    @property
    def nvdec0_disabled(self) -> bool:
        return self.opaque_raw.get(11) == bytes([NVDEC_DISABLED])


class _Reader:
    """A cursor over the report that refuses to read past its end."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, size: int, what: str) -> bytes:
        end = self.pos + size
        if end > len(self.data):
            raise EvidenceError(
                f"NVIDIA report truncated in {what} (needs {size} bytes at offset {self.pos})"
            )
        out = self.data[self.pos : end]
        self.pos = end
        return out

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def u16(self, what: str) -> int:
        value: int = struct.unpack("<H", self.take(2, what))[0]
        return value

    def u24(self, what: str) -> int:
        return int.from_bytes(self.take(3, what), "little")


def parse_report(data: bytes) -> HopperReport:
    """Parse a Hopper attestation report (raw bytes); ``EvidenceError`` on any deviation."""
    if not isinstance(data, bytes | bytearray):
        raise EvidenceError("NVIDIA report must be bytes")
    data = bytes(data)
    if len(data) > MAX_REPORT:
        raise EvidenceError(f"NVIDIA report is larger than {MAX_REPORT} bytes")
    r = _Reader(data)
    version, code, req_p1, req_p2 = r.take(4, "the SPDM request header")
    if version != SPDM_VERSION or code != GET_MEASUREMENTS:
        raise EvidenceError(
            f"NVIDIA report does not start with an SPDM 1.1 GET_MEASUREMENTS request "
            f"(version 0x{version:02x}, code 0x{code:02x})"
        )
    if not req_p1 & 0x01:
        raise EvidenceError("the SPDM request did not ask for a signed response")
    nonce = r.take(NONCE_SIZE, "the request nonce")
    slot_id = r.u8("the request slot id")
    if slot_id > 7:
        raise EvidenceError(f"SPDM slot id {slot_id} is out of range (0-7)")
    version, code, resp_p1, resp_p2 = r.take(4, "the SPDM response header")
    if version != SPDM_VERSION or code != MEASUREMENTS:
        raise EvidenceError(
            f"the SPDM response is not a 1.1 MEASUREMENTS response "
            f"(version 0x{version:02x}, code 0x{code:02x})"
        )
    if resp_p2 & 0x0F != slot_id:
        raise EvidenceError(
            f"the SPDM response names slot {resp_p2 & 0x0F}, the request slot {slot_id}"
        )
    count = r.u8("the number of measurement blocks")
    record = r.take(r.u24("the measurement record length"), "the measurement record")
    blocks = _parse_record(record, count)
    if req_p2 != 0xFF and count > 1:
        raise EvidenceError("the SPDM request asked for one measurement; the response has more")
    responder_nonce = r.take(NONCE_SIZE, "the responder nonce")
    opaque_raw = _parse_opaque_tlvs(r.take(r.u16("the opaque data length"), "the opaque data"))
    signed_end = r.pos
    signature = r.take(SIGNATURE_SIZE, "the signature")
    trailing = data[r.pos :]
    if len(trailing) > MAX_TRAILING_PADDING or trailing.strip(b"\x00"):
        raise EvidenceError(
            f"NVIDIA report has {len(trailing)} unexpected bytes after the signature"
        )
    return HopperReport(
        request_param1=req_p1,
        request_param2=req_p2,
        nonce=nonce,
        slot_id=slot_id,
        response_param1=resp_p1,
        response_param2=resp_p2,
        blocks=blocks,
        responder_nonce=responder_nonce,
        opaque={OPAQUE_NAMES[t]: _decode_opaque(t, v) for t, v in opaque_raw.items()},
        opaque_raw=opaque_raw,
        signed_bytes=data[:signed_end],
        signature=signature,
    )


def _parse_record(record: bytes, count: int) -> tuple[MeasurementBlock, ...]:
    r = _Reader(record)
    blocks: list[MeasurementBlock] = []
    seen: set[int] = set()
    for _ in range(count):
        index = r.u8("a measurement block index")
        spec = r.u8("a measurement specification")
        size = r.u16("a measurement block size")
        body = _Reader(r.take(size, f"measurement block {index}"))
        if spec != DMTF_SPEC:
            raise EvidenceError(
                f"measurement block {index} is not in the DMTF layout (spec 0x{spec:02x})"
            )
        if index == 0 or index in seen:
            raise EvidenceError(f"measurement block index {index} is zero or repeated")
        seen.add(index)
        dmtf_type = body.u8(f"the DMTF type of block {index}")
        value = body.take(body.u16(f"the value size of block {index}"), f"block {index} value")
        if body.pos != len(body.data):
            raise EvidenceError(f"measurement block {index} has bytes after its value")
        blocks.append(MeasurementBlock(index, dmtf_type, value))
    if r.pos != len(record):
        raise EvidenceError(
            f"the measurement record has {len(record) - r.pos} bytes after its {count} blocks"
        )
    return tuple(blocks)


def _parse_opaque_tlvs(data: bytes) -> dict[int, bytes]:
    r = _Reader(data)
    items: dict[int, bytes] = {}
    while r.pos < len(data):
        kind = r.u16("an opaque data type")
        value = r.take(r.u16("an opaque data size"), f"opaque data item {kind}")
        if kind not in OPAQUE_NAMES:
            raise EvidenceError(f"unknown NVIDIA opaque data type {kind}")
        if kind in items:
            raise EvidenceError(f"NVIDIA opaque data type {OPAQUE_NAMES[kind]} is repeated")
        items[kind] = value
    if 3 not in items or 6 not in items:
        raise EvidenceError("NVIDIA report must carry both the driver and the VBIOS version")
    return items


def _decode_opaque(kind: int, value: bytes) -> Any:
    """One opaque value as Trustee's local verifier renders it in its claims."""
    if kind in _TEXT_TYPES:
        return value.decode("utf-8", "replace").rstrip("\x00")
    if kind == 6:
        return _vbios_version(value)
    if kind == 12:
        return _counts(value, 4)
    if kind == 22:
        if len(value) % 8:
            raise EvidenceError("NVIDIA switch PDI list is not a multiple of 8 bytes")
        return [value[i : i + 8].hex() for i in range(0, len(value), 8)]
    if kind in (34, 36):
        if len(value) > 8:
            raise EvidenceError(f"NVIDIA opaque {OPAQUE_NAMES[kind]} is longer than 8 bytes")
        number = int.from_bytes(value, "little")
        return number if kind == 34 else _FEATURES.get(number, "unknown")
    return value.hex()


def _vbios_version(value: bytes) -> str:
    """``96.00.9f.00.01`` from ``00 9f 00 96 01 00 00 00``: the first half reversed, then
    the byte after it."""
    half = len(value) // 2
    if half == 0 or len(value) <= half:
        raise EvidenceError("NVIDIA VBIOS version is too short")
    return ".".join(f"{b:02x}" for b in reversed(value[:half])) + f".{value[half]:02x}"


def _counts(value: bytes, size: int) -> dict[str, int]:
    if len(value) % size:
        raise EvidenceError(f"NVIDIA measurement counts are not a multiple of {size} bytes")
    if len(value) // size > 255:
        raise EvidenceError("NVIDIA measurement counts list more than 255 entries")
    return {
        str(i + 1): int.from_bytes(value[i * size : (i + 1) * size], "little")
        for i in range(len(value) // size)
    }
