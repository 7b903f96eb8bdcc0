"""The strict SPDM GET_MEASUREMENTS parser on the real Hopper reports and broken copies."""

from __future__ import annotations

import struct

import pytest

from modelseal.errors import EvidenceError
from modelseal.tee.nvidia.report import REQUEST_SIZE, parse_report
from tests.unit.tee.nvidia.conftest import COCO, SAMPLE, Pair

RESPONSE = REQUEST_SIZE


def test_fields_of_both_reports(pair: Pair) -> None:
    report = parse_report(pair.report)
    assert report.nonce.hex() == pair.nonce[:64]
    assert len(report.signed_bytes) == pair.signed_end
    assert report.signature == pair.report[pair.signed_end : pair.signed_end + 96]
    assert len(report.blocks) == 64
    assert [b.index for b in report.blocks] == list(range(1, 65))
    assert report.driver_version == pair.driver
    assert report.vbios_version == pair.vbios
    assert report.fwid is not None
    assert report.fwid.hex() == pair.fwid
    assert report.opaque["project"] == "1010"
    assert report.opaque["project_sku"] == "0200"
    assert report.opaque["chip_sku"] == "882"
    assert report.opaque["board_id"] == "b1030000"
    assert report.nvdec0_disabled


def test_newer_firmware_fields() -> None:
    report = parse_report(COCO.report)
    assert report.opaque["opaque_data_version"] == 1
    assert report.opaque["feature_flag"] == "SPT"
    assert "opaque_data_version" not in parse_report(SAMPLE.report).opaque


def test_trailing_zero_padding_only() -> None:
    raw = COCO.report
    assert raw[-1:] == b"\x00"  # one zero byte after the signature, as the device sent it
    with pytest.raises(EvidenceError, match="after the signature"):
        parse_report(raw[:-1] + b"\x01")
    with pytest.raises(EvidenceError, match="after the signature"):
        parse_report(SAMPLE.report + bytes(17))


def _opaque_start(raw: bytes) -> int:
    record = int.from_bytes(raw[RESPONSE + 5 : RESPONSE + 8], "little")
    return RESPONSE + 8 + record + 32


@pytest.mark.parametrize(
    ("offset", "value", "reason"),
    [
        (0, 0x10, "GET_MEASUREMENTS"),
        (1, 0x60, "GET_MEASUREMENTS"),
        (2, 0x00, "signed response"),
        (36, 0x09, "slot id"),
        (RESPONSE, 0x12, "MEASUREMENTS response"),
        (RESPONSE + 1, 0xE0, "MEASUREMENTS response"),
        (RESPONSE + 3, 0x01, "names slot"),
        (RESPONSE + 4, 63, "after its 63 blocks"),
        (RESPONSE + 4, 65, "truncated"),
        (RESPONSE + 8, 0, "zero or repeated"),
        (RESPONSE + 8 + 55, 1, "zero or repeated"),  # block 2 claims index 1
        (RESPONSE + 9, 0x02, "DMTF layout"),
    ],
)
def test_malformed_headers(offset: int, value: int, reason: str) -> None:
    raw = bytearray(SAMPLE.report)
    raw[offset] = value
    with pytest.raises(EvidenceError, match=reason):
        parse_report(bytes(raw))


def test_opaque_rules() -> None:
    raw = SAMPLE.report
    start = _opaque_start(raw)
    length = struct.unpack_from("<H", raw, start)[0]
    items = raw[start + 2 : start + 2 + length]
    head, tail = raw[:start], raw[start + 2 + length :]

    def with_opaque(data: bytes) -> bytes:
        return head + struct.pack("<H", len(data)) + data + tail

    assert parse_report(with_opaque(items)).driver_version == SAMPLE.driver
    with pytest.raises(EvidenceError, match="unknown NVIDIA opaque data type 99"):
        parse_report(with_opaque(items + struct.pack("<HH", 99, 1) + b"x"))
    with pytest.raises(EvidenceError, match="driver_version is repeated"):
        parse_report(with_opaque(items + struct.pack("<HH", 3, 2) + b"1\x00"))
    with pytest.raises(EvidenceError, match="truncated"):
        parse_report(with_opaque(items + struct.pack("<HH", 7, 9) + b"x"))
    # the first item is the VBIOS version: without it the report names no firmware
    first = 4 + struct.unpack_from("<H", items, 2)[0]
    with pytest.raises(EvidenceError, match="driver and the VBIOS version"):
        parse_report(with_opaque(items[first:]))


@pytest.mark.parametrize("cut", [0, 1, 36, 37, 45, 100, 3600, 4000, 4021, 4116])
def test_truncations(cut: int) -> None:
    with pytest.raises(EvidenceError):
        parse_report(SAMPLE.report[:cut])


def test_size_cap() -> None:
    with pytest.raises(EvidenceError, match="larger than"):
        parse_report(bytes(64 * 1024 + 1))
