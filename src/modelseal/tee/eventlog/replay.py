"""Replay event logs into register values: RTMRs (CCEL) and PCRs (TCG2).

Extend rule for both: ``R_new = H(R_old || digest)`` from all-zero registers, with the
bank's hash ``H``; EV_NO_ACTION events are never extended (they are informational). TCG2
logs may carry a "StartupLocality" EV_NO_ACTION event: PCR0 then starts as ``00..0L``
(locality L in the last byte), as the TPM does after a locality-3/4 startup.

CCEL indices are CC measurement-register indices: 0 = MRTD (built by the TDX module,
not replayable), 1..4 = RTMR0..3.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

from modelseal.errors import EvidenceError
from modelseal.tee.eventlog.tcg import (
    ALG_NAMES,
    ALG_SHA1,
    ALG_SHA256,
    ALG_SHA384,
    ALG_SHA512,
    EV_NO_ACTION,
    EventLog,
)

_HASHES = {ALG_SHA1: "sha1", ALG_SHA256: "sha256", ALG_SHA384: "sha384", ALG_SHA512: "sha512"}
_STARTUP_LOCALITY = b"StartupLocality\x00"

#: CCEL measurement-register index -> RTMR number
CCEL_RTMR_OF_INDEX = {1: 0, 2: 1, 3: 2, 4: 3}


def _hash_name(alg: int) -> str:
    name = _HASHES.get(alg)
    if name is None:
        raise EvidenceError(f"cannot replay digests of algorithm {ALG_NAMES.get(alg, hex(alg))}")
    return name


def replay_ccel(log: EventLog) -> dict[int, bytes]:
    """RTMR number (0..3) -> replayed SHA-384 value; all four registers are returned."""
    if ALG_SHA384 not in log.algorithms:
        raise EvidenceError("CCEL log has no SHA-384 digests")
    rtmrs = {n: bytes(48) for n in range(4)}
    for ev in log.events:
        if ev.event_type == EV_NO_ACTION or ev.index == 0:
            continue
        rtmr = CCEL_RTMR_OF_INDEX.get(ev.index)
        if rtmr is None:
            raise EvidenceError(f"CCEL event at offset {ev.offset} has MR index {ev.index}")
        digest = ev.digests.get(ALG_SHA384)
        if digest is None:
            raise EvidenceError(f"CCEL event at offset {ev.offset} lacks a SHA-384 digest")
        rtmrs[rtmr] = hashlib.sha384(rtmrs[rtmr] + digest).digest()
    return rtmrs


def ccel_registers_with_events(log: EventLog) -> set[int]:
    """RTMR numbers that at least one extending event touches."""
    return {
        CCEL_RTMR_OF_INDEX[ev.index]
        for ev in log.events
        if ev.event_type != EV_NO_ACTION and ev.index in CCEL_RTMR_OF_INDEX
    }


def replay_tcg2(log: EventLog, alg: int = ALG_SHA256, *, pcrs: int = 24) -> dict[int, bytes]:
    """PCR index -> replayed value in bank ``alg`` (only PCRs the log extends or PCR0)."""
    if alg not in log.algorithms:
        raise EvidenceError(f"event log has no {ALG_NAMES.get(alg, hex(alg))} digests")
    name = _hash_name(alg)
    size = log.algorithms[alg]
    locality = 0
    for ev in log.events:
        if (
            ev.event_type == EV_NO_ACTION
            and ev.index == 0
            and ev.data.startswith(_STARTUP_LOCALITY)
            and len(ev.data) >= len(_STARTUP_LOCALITY) + 1
        ):
            locality = ev.data[len(_STARTUP_LOCALITY)]
    values: dict[int, bytes] = {}
    for ev in log.events:
        if ev.event_type == EV_NO_ACTION:
            continue
        if not 0 <= ev.index < pcrs:
            raise EvidenceError(f"event at offset {ev.offset} extends PCR {ev.index}")
        digest = ev.digests.get(alg)
        if digest is None:
            raise EvidenceError(f"event at offset {ev.offset} lacks a {name} digest")
        if ev.index not in values:
            values[ev.index] = bytes(size - 1) + bytes([locality]) if ev.index == 0 else bytes(size)
        values[ev.index] = hashlib.new(name, values[ev.index] + digest).digest()
    return values


def check_registers(
    replayed: Mapping[int, bytes], quoted: Mapping[int, bytes], *, names: str, only: set[int]
) -> None:
    """Every register in ``only`` must replay to the quoted value (constant-time compare)."""
    for reg in sorted(only):
        want = quoted.get(reg)
        got = replayed.get(reg)
        if want is None or got is None or not hmac.compare_digest(want, got):
            raise EvidenceError(
                f"event log does not replay to the quoted {names}{reg}: "
                f"replayed {got.hex() if got else 'nothing'}, quoted {want.hex() if want else '-'}"
            )
