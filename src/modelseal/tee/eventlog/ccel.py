"""CC Event Log (CCEL, ACPI 6.5 section 5.2.34) for TDX: table, log area, RTMR check.

The ACPI table ``/sys/firmware/acpi/tables/CCEL`` (56 bytes: 36-byte ACPI header with the
"CCEL" signature, CC type u8 (2 = TDX), subtype u8, reserved u16, log area minimum length
u64, log area start address u64) describes the log area that Linux exposes as
``/sys/firmware/acpi/tables/data/CCEL``; the log area is a TCG crypto-agile log with
SHA-384 digests whose indices are CC measurement-register indices.
"""

from __future__ import annotations

import hashlib
import struct
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from modelseal.errors import EvidenceError
from modelseal.tee.eventlog.components import MeasuredComponents, extract_components
from modelseal.tee.eventlog.replay import ccel_registers_with_events, check_registers, replay_ccel
from modelseal.tee.eventlog.tcg import ALG_SHA384, MAX_LOG_SIZE, parse_event_log

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


@dataclass(frozen=True)
class _Replayed:
    """What a CCEL's bytes alone determine: replayed RTMRs, components, event count, and
    the registers its events extend."""

    rtmrs: dict[int, bytes]
    components: MeasuredComponents
    events: int
    extended: frozenset[int]


#: Replays of the logs seen last, by SHA-256 of the log bytes. Every quote of a TD carries
#: the same boot log (until the TD extends RTMR3 at run time), so a KBS verifying it again
#: and again skips the parse and replay; the quote's own RTMRs are still compared each time.
#: Only a log that matched its quote is remembered (a peer cannot fill the memo with logs
#: that fail), and the remembered logs' bytes are bounded in total: a replay's components
#: (application digests, runtime event texts) grow with its log, which may be megabytes.
_REPLAYS: OrderedDict[bytes, tuple[_Replayed, int]] = OrderedDict()
_REPLAYS_MAX = 256
_REPLAYS_MAX_BYTES = 32 * 1024 * 1024
_replays_bytes = 0
_replays_lock = threading.Lock()


def _replayed(log_bytes: bytes) -> tuple[_Replayed, bytes | None]:
    """Parse and replay ``log_bytes``, or its remembered replay (a malformed log raises
    every time); with the key to remember a fresh replay under, None for a remembered one
    or one never to be remembered."""
    remember = isinstance(log_bytes, bytes) and len(log_bytes) <= MAX_LOG_SIZE
    key = hashlib.sha256(log_bytes).digest() if remember else None
    if key is not None:
        with _replays_lock:
            hit = _REPLAYS.get(key)
            if hit is not None:
                _REPLAYS.move_to_end(key)
                return hit[0], None
    log = parse_event_log(log_bytes)
    replayed = _Replayed(
        replay_ccel(log),
        extract_components(log, ALG_SHA384),
        len(log.events),
        frozenset(ccel_registers_with_events(log)),
    )
    return replayed, key


def _remember(key: bytes, replayed: _Replayed, size: int) -> None:
    global _replays_bytes
    with _replays_lock:
        if key in _REPLAYS or size > _REPLAYS_MAX_BYTES:
            return
        _REPLAYS[key] = (replayed, size)
        _replays_bytes += size
        while len(_REPLAYS) > _REPLAYS_MAX or _replays_bytes > _REPLAYS_MAX_BYTES:
            _replays_bytes -= _REPLAYS.popitem(last=False)[1][1]


def verify_ccel(log_bytes: bytes, quoted_rtmrs: tuple[bytes, ...] | None) -> CcelResult:
    """Parse and replay a CCEL; when ``quoted_rtmrs`` is given, every RTMR the log extends
    must replay to the quoted value (registers the log never touches are not checked:
    runtime components may extend them, e.g. RTMR3)."""
    replayed, key = _replayed(log_bytes)
    if quoted_rtmrs is not None:
        check_registers(
            replayed.rtmrs,
            dict(enumerate(quoted_rtmrs)),
            names="RTMR",
            only=set(replayed.extended),
        )
        if key is not None:
            _remember(key, replayed, len(log_bytes))
    # copies: claims built from one result must not share lists with the next one's
    c = replayed.components
    components = MeasuredComponents(
        **{
            **vars(c),
            "efi_applications": list(c.efi_applications),
            "runtime_events": list(c.runtime_events),
        }
    )
    return CcelResult(dict(replayed.rtmrs), components, replayed.events)


def read_ccel(data_path: Path = CCEL_DATA_PATH) -> bytes | None:
    """The local CCEL log area, or None when this machine has none (or it is unreadable)."""
    try:
        return data_path.read_bytes()
    except OSError:
        return None
