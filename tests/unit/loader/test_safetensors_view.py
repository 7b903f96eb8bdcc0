"""Our safetensors header parser agrees with the stock package and rejects bad input."""

from __future__ import annotations

import contextlib
import json
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from modelseal import errors
from modelseal.format.safetensors import parse_safetensors
from modelseal.loader.safetensors_view import numpy_views, torch_views

DTYPES = ["float32", "float16", "float64", "int8", "uint8", "int32", "int64", "bool", "uint16"]


@settings(max_examples=40, deadline=None)
@given(
    st.dictionaries(
        st.text(alphabet="abcdefgh._", min_size=1, max_size=8),
        st.tuples(st.sampled_from(DTYPES), st.lists(st.integers(0, 5), max_size=3)),
        max_size=5,
    )
)
def test_views_equal_stock_loader(spec: dict[str, tuple[str, list[int]]]) -> None:
    rng = np.random.default_rng(0)
    tensors = {
        name: np.asarray(rng.random(shape) * 100).astype(dtype)
        for name, (dtype, shape) in spec.items()
    }
    blob = st_save(tensors, metadata={"k": "v"})
    buf = memoryview(bytearray(blob))
    views = numpy_views(buf)
    expected = st_load(blob)
    assert set(views) == set(expected)
    for name, arr in views.items():
        assert arr.dtype == expected[name].dtype
        assert arr.shape == expected[name].shape
        assert np.array_equal(arr, expected[name])
    assert parse_safetensors(buf).metadata == {"k": "v"}


def test_views_share_memory() -> None:
    blob = bytearray(st_save({"w": np.arange(16, dtype=np.float32)}))
    views = numpy_views(memoryview(blob))
    header = parse_safetensors(blob)
    start = header.data_start + header.tensor("w").start
    blob[start : start + 4] = struct.pack("<f", 42.0)
    assert views["w"][0] == 42.0  # a view, not a copy


def _raw(header: object, data: bytes = b"") -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


@pytest.mark.parametrize(
    "blob",
    [
        b"",
        b"\x05\x00\x00\x00\x00\x00\x00\x00ab",
        struct.pack("<Q", 2) + b"\xff\xfe",
        _raw([1, 2]),
        _raw({"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4),
        _raw({"t": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8),
        _raw({"t": {"dtype": "X9", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8),
        _raw({"t": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, b"\0" * 8),
        _raw({"t": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, b"\0" * 8),
        _raw({"t": {"dtype": "F32", "shape": [2]}}, b"\0" * 8),
        _raw({"__metadata__": {"a": 1}}),
    ],
)
def test_malformed_headers(blob: bytes) -> None:
    with pytest.raises(errors.FormatError):
        parse_safetensors(blob)


@given(st.binary(max_size=200))
def test_parser_never_crashes(blob: bytes) -> None:
    with contextlib.suppress(errors.FormatError):
        parse_safetensors(blob)


def test_bf16_needs_torch_or_ml_dtypes() -> None:
    blob = _raw({"t": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 4)
    try:
        import ml_dtypes  # noqa: F401
    except ImportError:
        with pytest.raises(errors.ConfigError):
            numpy_views(memoryview(bytearray(blob)))


def test_torch_views_need_torch() -> None:
    try:
        import torch  # noqa: F401
    except ImportError:
        with pytest.raises(errors.ConfigError):
            torch_views(memoryview(bytearray(_raw({}))))
    else:
        blob = bytearray(st_save({"w": np.arange(4, dtype=np.float32)}))
        assert torch_views(memoryview(blob))["w"].tolist() == [0.0, 1.0, 2.0, 3.0]
