"""TCG PC Client crypto-agile event log parser (shared by CCEL/TDX and TCG2/TPM).

Layout (TCG PC Client Platform Firmware Profile, section 10): the first record is a legacy
``TCG_PCR_EVENT`` (u32 index, u32 type = EV_NO_ACTION, 20-byte SHA-1 digest, u32 size,
data) whose data is the ``TCG_EfiSpecIDEvent`` ("Spec ID Event03": the digest algorithms
and their sizes). Every later record is a ``TCG_PCR_EVENT2``: u32 index, u32 type, u32
digest count, ``count`` × (u16 algorithm id, digest of the size the Spec ID event
declared), u32 event size, event data. All integers little-endian.

Parsing ends at the end of the buffer, at an index of 0xFFFFFFFF (unused log area in
CCEL is 0xFF-filled), or at a record whose index and type are both 0 (zero padding).
Everything else that does not fit is an :class:`EvidenceError`: unknown algorithms,
sizes running past the buffer, too many events, oversized event data.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from modelseal.errors import EvidenceError

ALG_SHA1 = 0x0004
ALG_SHA256 = 0x000B
ALG_SHA384 = 0x000C
ALG_SHA512 = 0x000D
ALG_SM3_256 = 0x0012
ALG_NAMES = {
    ALG_SHA1: "sha1",
    ALG_SHA256: "sha256",
    ALG_SHA384: "sha384",
    ALG_SHA512: "sha512",
    ALG_SM3_256: "sm3_256",
}
KNOWN_DIGEST_SIZES = {ALG_SHA1: 20, ALG_SHA256: 32, ALG_SHA384: 48, ALG_SHA512: 64, ALG_SM3_256: 32}

EV_PREBOOT_CERT = 0x0
EV_POST_CODE = 0x1
EV_NO_ACTION = 0x3
EV_SEPARATOR = 0x4
EV_ACTION = 0x5
EV_EVENT_TAG = 0x6
EV_S_CRTM_CONTENTS = 0x7
EV_S_CRTM_VERSION = 0x8
EV_CPU_MICROCODE = 0x9
EV_PLATFORM_CONFIG_FLAGS = 0xA
EV_TABLE_OF_DEVICES = 0xB
EV_COMPACT_HASH = 0xC
EV_IPL = 0xD
EV_IPL_PARTITION_DATA = 0xE
EV_NONHOST_CODE = 0xF
EV_NONHOST_CONFIG = 0x10
EV_NONHOST_INFO = 0x11
EV_OMIT_BOOT_DEVICE_EVENTS = 0x12
EV_EFI_EVENT_BASE = 0x80000000
EV_EFI_VARIABLE_DRIVER_CONFIG = 0x80000001
EV_EFI_VARIABLE_BOOT = 0x80000002
EV_EFI_BOOT_SERVICES_APPLICATION = 0x80000003
EV_EFI_BOOT_SERVICES_DRIVER = 0x80000004
EV_EFI_RUNTIME_SERVICES_DRIVER = 0x80000005
EV_EFI_GPT_EVENT = 0x80000006
EV_EFI_ACTION = 0x80000007
EV_EFI_PLATFORM_FIRMWARE_BLOB = 0x80000008
EV_EFI_HANDOFF_TABLES = 0x80000009
EV_EFI_PLATFORM_FIRMWARE_BLOB2 = 0x8000000A
EV_EFI_HANDOFF_TABLES2 = 0x8000000B
EV_EFI_VARIABLE_BOOT2 = 0x8000000C
EV_EFI_HCRTM_EVENT = 0x80000010
EV_EFI_VARIABLE_AUTHORITY = 0x800000E0
EV_EFI_SPDM_FIRMWARE_BLOB = 0x800000E1
EV_EFI_SPDM_FIRMWARE_CONFIG = 0x800000E2

EVENT_TYPE_NAMES = {
    value: name
    for name, value in globals().items()
    if name.startswith("EV_") and isinstance(value, int) and name != "EV_EFI_EVENT_BASE"
}

#: Limits that keep a hostile log from costing unbounded time or memory.
MAX_LOG_SIZE = 16 * 1024 * 1024
MAX_EVENTS = 100_000
MAX_EVENT_DATA = 1024 * 1024
_SPEC_ID_SIGNATURE = b"Spec ID Event03\x00"


@dataclass(frozen=True)
class Event:
    index: int  # PCR index (TCG2) or CC measurement-register index (CCEL)
    event_type: int
    digests: dict[int, bytes]
    data: bytes
    offset: int

    @property
    def type_name(self) -> str:
        return EVENT_TYPE_NAMES.get(self.event_type, f"0x{self.event_type:08x}")


@dataclass(frozen=True)
class EventLog:
    #: algorithm id -> digest size, in the order the Spec ID event lists them
    algorithms: dict[int, int]
    events: list[Event] = field(default_factory=list)
    spec_version: tuple[int, int, int] = (2, 0, 0)


class _Cursor:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def remaining(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or n > self.remaining():
            raise EvidenceError(f"event log truncated at {what} (offset {self.pos})")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def u16(self, what: str) -> int:
        value: int = struct.unpack("<H", self.take(2, what))[0]
        return value

    def u32(self, what: str) -> int:
        value: int = struct.unpack("<I", self.take(4, what))[0]
        return value


def _parse_spec_id(data: bytes) -> tuple[dict[int, int], tuple[int, int, int]]:
    c = _Cursor(data)
    if c.take(16, "Spec ID signature") != _SPEC_ID_SIGNATURE:
        raise EvidenceError("event log is not crypto-agile (first event is not 'Spec ID Event03')")
    c.u32("platform class")
    minor = c.u8("spec version minor")
    major = c.u8("spec version major")
    errata = c.u8("spec errata")
    c.u8("uintn size")
    count = c.u32("number of algorithms")
    if not 1 <= count <= 16:
        raise EvidenceError(f"event log Spec ID lists {count} algorithms")
    algorithms: dict[int, int] = {}
    for _ in range(count):
        alg = c.u16("algorithm id")
        size = c.u16("digest size")
        known = KNOWN_DIGEST_SIZES.get(alg)
        if known is not None and known != size:
            raise EvidenceError(f"event log declares {size}-byte digests for algorithm 0x{alg:04x}")
        if not 1 <= size <= 64 or alg in algorithms:
            raise EvidenceError("event log Spec ID has an invalid algorithm list")
        algorithms[alg] = size
    vendor = c.u8("vendor info size")
    c.take(vendor, "vendor info")
    return algorithms, (major, minor, errata)


def parse_event_log(data: bytes, *, max_events: int = MAX_EVENTS) -> EventLog:
    """Parse a crypto-agile event log; raises :class:`EvidenceError` on malformed input."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise EvidenceError("event log must be bytes")
    data = bytes(data)
    if len(data) > MAX_LOG_SIZE:
        raise EvidenceError(f"event log too large ({len(data)} bytes)")
    c = _Cursor(data)
    c.u32("first event index")
    first_type = c.u32("first event type")
    c.take(20, "first event digest")
    size = c.u32("first event size")
    if first_type != EV_NO_ACTION or size > MAX_EVENT_DATA:
        raise EvidenceError("event log does not start with a Spec ID (EV_NO_ACTION) event")
    algorithms, version = _parse_spec_id(c.take(size, "Spec ID event"))
    events: list[Event] = []
    while c.remaining() >= 8:
        offset = c.pos
        index = c.u32("event index")
        event_type = c.u32("event type")
        if index == 0xFFFFFFFF or (index == 0 and event_type == 0):
            break
        if len(events) >= max_events:
            raise EvidenceError(f"event log has more than {max_events} events")
        count = c.u32("digest count")
        if not 1 <= count <= len(algorithms):
            raise EvidenceError(f"event at offset {offset} has {count} digests")
        digests: dict[int, bytes] = {}
        for _ in range(count):
            alg = c.u16("digest algorithm")
            dsize = algorithms.get(alg)
            if dsize is None:
                raise EvidenceError(
                    f"event at offset {offset} uses algorithm 0x{alg:04x} not in the Spec ID"
                )
            if alg in digests:
                raise EvidenceError(f"event at offset {offset} repeats algorithm 0x{alg:04x}")
            digests[alg] = c.take(dsize, "digest")
        esize = c.u32("event size")
        if esize > MAX_EVENT_DATA:
            raise EvidenceError(f"event at offset {offset} has {esize} bytes of data")
        events.append(Event(index, event_type, digests, c.take(esize, "event data"), offset))
    return EventLog(algorithms=algorithms, events=events, spec_version=version)
