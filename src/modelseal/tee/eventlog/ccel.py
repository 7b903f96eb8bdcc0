"""CC Event Log (CCEL, ACPI 6.5 section 5.2.34) for TDX: table, log area, RTMR check.

The ACPI table ``/sys/firmware/acpi/tables/CCEL`` (56 bytes: 36-byte ACPI header with the
"CCEL" signature, CC type u8 (2 = TDX), subtype u8, reserved u16, log area minimum length
u64, log area start address u64) describes the log area that Linux exposes as
``/sys/firmware/acpi/tables/data/CCEL``; the log area is a TCG crypto-agile log with
SHA-384 digests whose indices are CC measurement-register indices.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from modelseal.errors import EvidenceError
from modelseal.tee.eventlog.components import MeasuredComponents, extract_components
from modelseal.tee.eventlog.replay import ccel_registers_with_events, check_registers, replay_ccel
from modelseal.tee.eventlog.tcg import ALG_SHA384, parse_event_log

CCEL_TABLE_PATH = Path("/sys/firmware/acpi/tables/CCEL")
CCEL_DATA_PATH = Path("/sys/firmware/acpi/tables/data/CCEL")
CC_TYPE_TDX = 2


@dataclass(frozen=True)
class CcelTable:
    cc_type: int
    cc_subtype: int
    log_area_min_length: int
    log_area_start: int


def parse_ccel_table(raw: bytes) -> CcelTable:
    """Parse the 56-byte CCEL ACPI table."""
    if len(raw) < 56 or raw[:4] != b"CCEL":
        raise EvidenceError("not a CCEL ACPI table")
    length = struct.unpack_from("<I", raw, 4)[0]
    if length != len(raw) or length < 56:
        raise EvidenceError("CCEL ACPI table length mismatch")
    if sum(raw) % 256 != 0:
        raise EvidenceError("CCEL ACPI table checksum mismatch")
    cc_type, cc_subtype = raw[36], raw[37]
    laml, lasa = struct.unpack_from("<QQ", raw, 40)
    return CcelTable(cc_type, cc_subtype, laml, lasa)


@dataclass(frozen=True)
class CcelResult:
    rtmrs: dict[int, bytes]
    components: MeasuredComponents
    events: int


def verify_ccel(log_bytes: bytes, quoted_rtmrs: tuple[bytes, ...] | None) -> CcelResult:
    """Parse and replay a CCEL; when ``quoted_rtmrs`` is given, every RTMR the log extends
    must replay to the quoted value (registers the log never touches are not checked:
    runtime components may extend them, e.g. RTMR3)."""
    log = parse_event_log(log_bytes)
    rtmrs = replay_ccel(log)
    if quoted_rtmrs is not None:
        check_registers(
            rtmrs,
            dict(enumerate(quoted_rtmrs)),
            names="RTMR",
            only=ccel_registers_with_events(log),
        )
    return CcelResult(rtmrs, extract_components(log, ALG_SHA384), len(log.events))


def read_ccel(data_path: Path = CCEL_DATA_PATH) -> bytes | None:
    """The local CCEL log area, or None when this machine has none (or it is unreadable)."""
    try:
        return data_path.read_bytes()
    except OSError:
        return None
