"""Fuzz targets: TCG crypto-agile event logs (TDX CCEL and TPM TCG2) through parsing, replay and
component extraction, and the CCEL ACPI table, mutating real logs."""

from __future__ import annotations

from functools import cache

import pytest

from modelseal.tee.eventlog import extract_components, parse_event_log, replay_tcg2
from modelseal.tee.eventlog.ccel import parse_ccel_table, verify_ccel
from modelseal.tee.tpm.structures import HASH_IDS
from tests.fuzz.harness import Target, read_vectors, run, shared

CCEL = [
    shared("eventlog", "trustee", name)
    for name in (
        "CCEL_data",
        "CCEL_data_gcp",
        "CCEL_data_grub",
        "CCEL_data_ovmf",
        "CCEL_AAEL_alibabacloud",
    )
] + [
    shared("eventlog", "go-tdx-guest", "ccel_data.dat"),
    shared("eventlog", "evidence-api", "ccel_data.bin"),
]
TCG2 = [
    shared("eventlog", "go-tpm-tools", name)
    for name in ("ubuntu-2404-amd-sevsnp.bin", "cos-101-amd-sev.bin", "rhel8-uefi.bin")
] + [shared("tpm", "go-tpm-tools", "gce-cos-85-nonce9009.eventlog.bin")]


def _trimmed(blobs: list[bytes]) -> tuple[bytes, ...]:
    """Log areas are padded to their reserved size: keep the events and 8 KiB of padding, so
    mutations land in the structure rather than the padding."""
    return tuple(b.rstrip(b"\x00").rstrip(b"\xff").rstrip(b"\x00") + bytes(8192) for b in blobs)


@cache
def _ccel() -> tuple[bytes, ...]:
    return _trimmed(read_vectors(*CCEL))


@cache
def _tcg2() -> tuple[bytes, ...]:
    return _trimmed(read_vectors(*TCG2))


def _replay_tcg2(data: bytes) -> object:
    """What the TPM verifier does with a log: parse, replay a bank, extract components."""
    log = parse_event_log(data)
    return [
        (replay_tcg2(log, alg), extract_components(log, alg))
        for alg in sorted(set(HASH_IDS.values()) & set(log.algorithms))
    ]


TARGETS = [
    Target("ccel-verify", lambda b: verify_ccel(b, None), _ccel),
    Target("tcg2-replay", _replay_tcg2, _tcg2),
    Target(
        "ccel-table",
        parse_ccel_table,
        lambda: read_vectors(shared("eventlog", "go-tdx-guest", "ccel_table.dat")),
        max_random=100,
    ),
]

pytestmark = pytest.mark.fuzz


@pytest.mark.parametrize("target", TARGETS, ids=str)
def test_fuzz(target: Target) -> None:
    run(target)
