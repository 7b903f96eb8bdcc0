"""Event-log parser: round trips, limits, and hypothesis fuzzing (typed errors only)."""

from __future__ import annotations

import contextlib
import hashlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelseal.errors import EvidenceError
from modelseal.tee.eventlog import parse_event_log, replay_ccel, replay_tcg2
from modelseal.tee.eventlog.encode import EventSpec, encode_event_log
from modelseal.tee.eventlog.tcg import (
    ALG_SHA1,
    ALG_SHA256,
    ALG_SHA384,
    EV_IPL,
    EV_NO_ACTION,
    EV_SEPARATOR,
)

LOG = encode_event_log(
    [
        EventSpec(1, EV_SEPARATOR, bytes(4)),
        EventSpec(2, EV_IPL, b"kernel_cmdline: ro\x00"),
        EventSpec(2, EV_NO_ACTION, b"ignored"),
        EventSpec(4, EV_IPL, b"app"),
    ]
)


def test_roundtrip_and_replay() -> None:
    log = parse_event_log(LOG)
    assert log.algorithms == {ALG_SHA384: 48}
    assert [e.index for e in log.events] == [1, 2, 2, 4]
    rtmrs = replay_ccel(log)
    r0 = hashlib.sha384(bytes(48) + hashlib.sha384(bytes(4)).digest()).digest()
    assert rtmrs[0] == r0
    assert rtmrs[2] == bytes(48)
    assert rtmrs[3] != bytes(48)


def test_padding_terminates() -> None:
    assert len(parse_event_log(LOG + b"\xff" * 64).events) == 4
    assert len(parse_event_log(LOG + bytes(64)).events) == 4


def test_multi_bank_and_locality() -> None:
    locality = EventSpec(0, EV_NO_ACTION, b"StartupLocality\x00\x03")
    log = parse_event_log(
        encode_event_log(
            [locality, EventSpec(0, EV_IPL, b"crtm")], algorithms=(ALG_SHA1, ALG_SHA256)
        )
    )
    pcr0 = replay_tcg2(log, ALG_SHA256)[0]
    start = bytes(31) + b"\x03"
    assert pcr0 == hashlib.sha256(start + hashlib.sha256(b"crtm").digest()).digest()
    assert len(replay_tcg2(log, ALG_SHA1)[0]) == 20
    with pytest.raises(EvidenceError, match="no sha384"):
        replay_tcg2(log, ALG_SHA384)
    with pytest.raises(EvidenceError, match="no SHA-384"):
        replay_ccel(log)


@pytest.mark.parametrize(
    ("blob", "reason"),
    [
        (b"", "truncated"),
        (LOG[:30], "truncated"),
        (LOG[:-2], "truncated"),
        (struct.pack("<II", 0, 1) + bytes(24), "Spec ID"),
        (LOG[:32] + b"Not an ID Event!" + LOG[48:], "crypto-agile"),
    ],
)
def test_malformed(blob: bytes, reason: str) -> None:
    with pytest.raises(EvidenceError, match=reason):
        parse_event_log(blob)


def test_unknown_algorithm_and_limits() -> None:
    log = bytearray(LOG)
    # digest algorithm of the first PCR_EVENT2 -> SHA-256 (not declared in the Spec ID)
    spec_len = struct.unpack_from("<I", LOG, 28)[0]
    pos = 32 + spec_len + 12
    struct.pack_into("<H", log, pos, ALG_SHA256)
    with pytest.raises(EvidenceError, match="not in the Spec ID"):
        parse_event_log(bytes(log))
    with pytest.raises(EvidenceError, match="more than 2 events"):
        parse_event_log(LOG, max_events=2)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_never_crash(blob: bytes) -> None:
    with contextlib.suppress(EvidenceError):
        parse_event_log(blob)


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=len(LOG) - 1), st.integers(min_value=1, max_value=255))
def test_mutations_typed_errors(pos: int, xor: int) -> None:
    blob = bytearray(LOG)
    blob[pos] ^= xor
    try:
        log = parse_event_log(bytes(blob))
        replay_ccel(log)
    except EvidenceError:
        pass


def test_mock_boot_log_components() -> None:
    from modelseal.tee.eventlog import extract_components
    from modelseal.tee.mock_tdx.attester import boot_event_log

    log = parse_event_log(boot_event_log(b"my kernel", "ro quiet"))
    comp = extract_components(log, ALG_SHA384)
    assert comp.kernel_digest == hashlib.sha384(b"my kernel").hexdigest()
    assert comp.cmdline == "ro quiet"
    assert comp.cmdline_digest == hashlib.sha384(b"kernel_cmdline: ro quiet\x00").hexdigest()
    assert comp.measurements() == {
        "kernel_digest": comp.kernel_digest,
        "cmdline_digest": comp.cmdline_digest,
    }


def test_ccel_table_checks() -> None:
    from modelseal.tee.eventlog.ccel import parse_ccel_table

    table = bytearray(b"CCEL" + struct.pack("<I", 56) + bytes(48))
    table[36] = 2
    struct.pack_into("<QQ", table, 40, 0x10000, 0x7F000000)
    table[9] = (-sum(table)) % 256
    parsed = parse_ccel_table(bytes(table))
    assert (parsed.cc_type, parsed.log_area_min_length) == (2, 0x10000)
    bad = bytearray(table)
    bad[40] ^= 1
    with pytest.raises(EvidenceError, match="checksum"):
        parse_ccel_table(bytes(bad))
    with pytest.raises(EvidenceError, match="not a CCEL"):
        parse_ccel_table(b"XSDT" + bytes(52))
    with pytest.raises(EvidenceError, match="length"):
        parse_ccel_table(bytes(table) + b"\x00")
