"""Strict quote parser and evidence decoding: malformed input -> EvidenceError, never a crash."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from modelseal._internal.encoding import b64_encode
from modelseal.errors import EvidenceError
from modelseal.tee.mock_tdx.ca import MockTdxCA
from modelseal.tee.mock_tdx.quote_builder import TdFields, build_quote
from modelseal.tee.tdx.evidence import decode_evidence
from modelseal.tee.tdx.quote import parse_quote


@pytest.fixture(scope="module")
def quote(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    ca = MockTdxCA.create(tmp_path_factory.mktemp("q") / "ca")
    return build_quote(ca, TdFields(report_data=b"\x05" * 64, mr_td=b"\x09" * 48))


def test_parse_mock_quote(quote: bytes) -> None:
    q = parse_quote(quote)
    assert q.header.version == 4
    assert q.td_report.mr_td == b"\x09" * 48
    assert q.signed_length == 632
    assert q.raw == quote
    assert parse_quote(quote + b"trailer").raw == quote
    with pytest.raises(EvidenceError, match="SGX"):
        _ = q.enclave_report


@pytest.mark.parametrize(
    ("pos", "value", "reason"),
    [
        (0, 3, "v3 must be an SGX quote"),
        (0, 9, "unsupported quote version"),
        (2, 3, "attestation key type"),
        (4, 0x55, "TEE type"),
        (632, 0xFF, "truncated"),
        (632 + 4 + 128, 7, "certification data type 7"),
    ],
)
def test_header_and_size_errors(quote: bytes, pos: int, value: int, reason: str) -> None:
    blob = bytearray(quote)
    blob[pos] = value
    with pytest.raises(EvidenceError, match=reason):
        parse_quote(bytes(blob))


def test_nested_size_mismatch(quote: bytes) -> None:
    blob = bytearray(quote)
    size = struct.unpack_from("<I", blob, 632)[0]
    struct.pack_into("<I", blob, 632, size - 1)
    with pytest.raises(EvidenceError):
        parse_quote(bytes(blob))


def test_too_large() -> None:
    with pytest.raises(EvidenceError, match="too large"):
        parse_quote(bytes(70 * 1024))


def test_decode_evidence_forms(quote: bytes, tmp_path: Path) -> None:
    wire = {"quote": b64_encode(quote), "cc_eventlog": None, "aa_eventlog": None}
    forms = [
        quote,
        quote.hex().encode(),
        ("0x" + quote.hex()).encode(),
        quote.hex(),
        " 0x" + quote.hex() + "\n",
        json.dumps(wire),
        json.dumps(wire).encode(),
        wire,
        b64_encode(quote),
    ]
    for form in forms:
        assert decode_evidence(form).quote == quote


@pytest.mark.parametrize(
    "bad",
    [
        {"quote": 3},
        {"quote": "!!"},
        {"quote": "AAAA", **{f"k{i}": 1 for i in range(17)}},
        {"quote": "AAAA", "cc_eventlog": 5},
        "{not json",
        "[1]",
        "zz-not-anything",
        42,
    ],
)
def test_decode_evidence_errors(bad: object) -> None:
    with pytest.raises(EvidenceError):
        decode_evidence(bad)


def test_unknown_members_ignored(quote: bytes) -> None:
    ev = decode_evidence({"quote": b64_encode(quote), "gpu_evidence_list": [], "x": 1})
    assert ev.quote == quote
    assert ev.ignored == ("gpu_evidence_list", "x")


def test_deeply_nested_json_evidence_is_a_typed_error() -> None:
    """The C JSON decoder recurses per level: a RecursionError must not escape (HTTP 500)."""
    deep = '{"a":' * 100_000 + "1" + "}" * 100_000
    for value in (deep, deep.encode(), '"' + "x" * 10 + '"'):
        with pytest.raises(EvidenceError):
            decode_evidence(value)
