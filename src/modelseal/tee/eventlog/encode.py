"""Encoder for crypto-agile TCG event logs (the inverse of :func:`parse_event_log`).

Used by the mock-tdx attester to produce a CCEL whose replay equals its RTMRs, and by
tests (round trips, mutations). Digests are computed here from each event's measured
content, as firmware does.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from modelseal.tee.eventlog.tcg import (
    ALG_SHA1,
    ALG_SHA256,
    ALG_SHA384,
    ALG_SHA512,
    EV_NO_ACTION,
    KNOWN_DIGEST_SIZES,
)

_HASH = {ALG_SHA1: "sha1", ALG_SHA256: "sha256", ALG_SHA384: "sha384", ALG_SHA512: "sha512"}


@dataclass(frozen=True)
class EventSpec:
    """One event to encode: register index, type, event data, and the measured bytes."""

    index: int
    event_type: int
    data: bytes
    measured: bytes | None = None  # defaults to ``data``


def spec_id_event(algorithms: Sequence[int]) -> bytes:
    """The leading TCG_PCR_EVENT carrying 'Spec ID Event03' for ``algorithms``."""
    body = b"Spec ID Event03\x00" + struct.pack("<IBBBBI", 0, 0, 2, 0, 2, len(algorithms))
    for alg in algorithms:
        body += struct.pack("<HH", alg, KNOWN_DIGEST_SIZES[alg])
    body += b"\x00"  # no vendor info
    return struct.pack("<II", 0, EV_NO_ACTION) + bytes(20) + struct.pack("<I", len(body)) + body


def encode_event(spec: EventSpec, algorithms: Sequence[int]) -> bytes:
    measured = spec.data if spec.measured is None else spec.measured
    out = struct.pack("<III", spec.index, spec.event_type, len(algorithms))
    for alg in algorithms:
        out += struct.pack("<H", alg) + hashlib.new(_HASH[alg], measured).digest()
    return out + struct.pack("<I", len(spec.data)) + spec.data


def encode_event_log(
    events: Iterable[EventSpec], algorithms: Sequence[int] = (ALG_SHA384,)
) -> bytes:
    """A complete crypto-agile log."""
    return spec_id_event(algorithms) + b"".join(encode_event(e, algorithms) for e in events)
