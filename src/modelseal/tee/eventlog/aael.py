"""Attestation Agent event log (AAEL) entries, as CoCo's AA writes them into the CC log.

The AA records a runtime event ``"<domain> <operation> <content>"`` as one crypto-agile
TCG2 event (guest-components ``attestation-agent/src/eventlog/tcg2.rs``):

* register index: the CC measurement register of the AA's configured PCR (default PCR
  17 → CC MR 4 = RTMR3 on TDX);
* event type ``EV_EVENT_TAG`` (6), one digest (SHA-384 on TDX);
* event data: ``TCG_PCClientTaggedEvent`` = tag id ``0x4141454C`` ("AAEL", u32 LE) ‖
  data size (u32 LE) ‖ the event text (UTF-8);
* digest: the hash of the whole event data (tag id, size and text).

The register is extended with that digest (``RTMR3 = SHA-384(RTMR3 ‖ digest)``), and the
AA's evidence carries the CCEL followed by these entries and an 8-byte ``0xFF`` end flag;
with no CCEL the AA puts a fixed 69-byte Spec ID header (SHA-384 and SM3) in front.
"""

from __future__ import annotations

import hashlib
import struct
from typing import Final

from modelseal.tee.eventlog.encode import spec_id_event
from modelseal.tee.eventlog.tcg import ALG_SHA384, EV_EVENT_TAG, parse_event_log

#: ``TCG_PCClientTaggedEvent`` tag id of AA events: ASCII "AAEL" read as a big-endian u32
AAEL_TAG_ID: Final = 0x4141454C
#: CC measurement-register index the AA extends by default (PCR 17 → CC MR 4 = RTMR3)
AA_DEFAULT_CC_MR: Final = 4
#: what the AA appends after the last event
END_FLAG: Final = b"\xff" * 8
#: where the AA keeps its event log (``AAEL_PATH`` overrides it, as for the AA)
AAEL_PATH: Final = "/run/attestation-agent/eventlog"


def tagged_event_data(text: str) -> bytes:
    """The event data of an AAEL entry: tag id, size, then the event text."""
    data = text.encode("utf-8")
    return struct.pack("<II", AAEL_TAG_ID, len(data)) + data


def aael_entry(text: str, *, cc_mr: int = AA_DEFAULT_CC_MR) -> tuple[bytes, bytes]:
    """``(entry bytes, SHA-384 digest)`` of one AAEL event in a SHA-384 CC event log."""
    data = tagged_event_data(text)
    digest = hashlib.sha384(data).digest()
    entry = (
        struct.pack("<III", cc_mr, EV_EVENT_TAG, 1)
        + struct.pack("<H", ALG_SHA384)
        + digest
        + struct.pack("<I", len(data))
        + data
    )
    return entry, digest


def log_end(log: bytes) -> int:
    """Where the events of a crypto-agile log end: the offset of its end marker or padding
    (a CCEL log area is 0xFF-filled after the last event), or its length."""
    parsed = parse_event_log(log)
    if not parsed.events:
        return _spec_id_end(log)
    last = parsed.events[-1]
    return (
        last.offset
        + 12
        + sum(2 + len(digest) for digest in last.digests.values())
        + 4
        + len(last.data)
    )


def _spec_id_end(log: bytes) -> int:
    size: int = struct.unpack_from("<I", log, 28)[0]
    return 32 + size


def with_runtime_events(ccel: bytes | None, aael: bytes | None) -> bytes | None:
    """The CC event log evidence carries, as the AA builds it: the CCEL cut after its last
    event, the AA's runtime entries, an 8-byte ``0xFF`` end flag; the CCEL unchanged when
    there are no runtime entries. Without a CCEL a SHA-384 Spec ID event leads (the AA
    writes a header whose signature is zeroed, which crypto-agile parsers refuse)."""
    if not aael:
        return ccel
    head = ccel[: log_end(ccel)] if ccel else spec_id_event([ALG_SHA384])
    return head + aael + END_FLAG
