"""The one safetensors parser: every check of the in-memory (SDK) path and of the file
(partial sealing) path applies to both entry points."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save as st_save

from modelseal.errors import FormatError
from modelseal.format.safetensors import (
    DTYPE_BITS,
    parse_safetensors,
    read_safetensors_header,
)


def _image(header: str | dict[str, object], data: bytes = b"") -> bytes:
    text = header if isinstance(header, str) else json.dumps(header)
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw + data


def _both(blob: bytes, tmp_path: Path) -> list[object]:
    """Parse ``blob`` from memory and from a file; return both results (or raise)."""
    path = tmp_path / "m.safetensors"
    path.write_bytes(blob)
    fd = os.open(path, os.O_RDONLY)
    try:
        return [parse_safetensors(blob), read_safetensors_header(fd)]
    finally:
        os.close(fd)


F32_2 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}

#: each was accepted by one of the two parsers this one replaces
REJECTED = {
    # the file parser took any dtype string and any byte length
    "unknown dtype": _image({"t": {**F32_2, "dtype": "X9"}}, bytes(8)),
    "length not shape": _image({"t": {**F32_2, "shape": [3]}}, bytes(8)),
    "extra tensor member": _image({"t": {**F32_2, "extra": 1}}, bytes(8)),
    "sub-byte remainder": _image(
        {"t": {"dtype": "F4", "shape": [3], "data_offsets": [0, 2]}}, bytes(2)
    ),
    # the in-memory parser took holes, overlaps, trailing bytes and duplicate members
    "hole": _image(
        {"a": {**F32_2, "data_offsets": [0, 8]}, "b": {**F32_2, "data_offsets": [12, 20]}},
        bytes(20),
    ),
    "overlap": _image(
        {"a": {**F32_2, "data_offsets": [0, 8]}, "b": {**F32_2, "data_offsets": [4, 12]}},
        bytes(12),
    ),
    "trailing bytes": _image({"t": F32_2}, bytes(9)),
    "duplicate member": _image(
        '{"t": ' + json.dumps(F32_2) + ', "t": ' + json.dumps(F32_2) + "}", bytes(8)
    ),
    # both
    "offsets past the data": _image({"t": F32_2}, bytes(4)),
    "bool as offset": _image({"t": {**F32_2, "data_offsets": [False, 8]}}, bytes(8)),
    "metadata not strings": _image({"__metadata__": {"a": 1}}),
    "header length past the end": struct.pack("<Q", 50) + b"{}",
    "too short": b"\x01\x00",
    "not JSON": struct.pack("<Q", 2) + b"\xff\xfe",
    "not an object": _image([1, 2]),
}


@pytest.mark.parametrize("name", sorted(REJECTED))
def test_rejected_by_both_entry_points(name: str, tmp_path: Path) -> None:
    blob = REJECTED[name]
    with pytest.raises(FormatError):
        parse_safetensors(blob)
    path = tmp_path / "m.safetensors"
    path.write_bytes(blob)
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(FormatError):
            read_safetensors_header(fd)
    finally:
        os.close(fd)


def test_stock_file_parses_the_same_both_ways(tmp_path: Path) -> None:
    blob = st_save(
        {"b": np.zeros((2, 3), np.float16), "a": np.arange(5, dtype=np.int64)},
        metadata={"format": "pt"},
    )
    mem, disk = _both(blob, tmp_path)
    assert mem == disk
    assert isinstance(mem, type(disk))
    header = parse_safetensors(blob)
    assert header.metadata == {"format": "pt"}
    assert {t.name: (t.dtype, t.shape) for t in header.tensors} == {
        "a": ("I64", (5,)),
        "b": ("F16", (2, 3)),
    }
    assert header.data_start + header.data_len == len(blob)


def test_every_specified_dtype_is_known() -> None:
    # sub-byte float formats pack two 4-bit (or four 6-bit) values per byte
    blob = _image({"t": {"dtype": "F4", "shape": [4], "data_offsets": [0, 2]}}, bytes(2))
    assert parse_safetensors(blob).tensor("t").dtype == "F4"
    assert {"BF16", "F8_E4M3", "F8_E8M0", "C64", "F6_E2M3"} <= set(DTYPE_BITS)
