"""Zero-copy safetensors: parse the header ourselves, view tensors in the decrypted buffer.

``safetensors.numpy.load``/``torch.load`` accept only ``bytes`` and copy every tensor (2x
peak memory, ~0.5-0.9 s/GiB, reference/deps.md §2.5). The format is simple enough to read
directly: an 8-byte little-endian header length N, N bytes of JSON mapping tensor names to
``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets relative to the data after the
header) plus an optional ``"__metadata__"`` string map. ``np.frombuffer`` /
``torch.frombuffer`` then build views in microseconds. Every malformed header is a
``FormatError``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from modelseal.errors import ConfigError, FormatError

#: safetensors' own limit on the JSON header
MAX_HEADER_LEN = 100_000_000

#: safetensors dtype -> (numpy dtype name or None, item size, torch dtype attribute)
DTYPES: dict[str, tuple[str | None, int, str]] = {
    "BOOL": ("bool", 1, "bool"),
    "U8": ("uint8", 1, "uint8"),
    "I8": ("int8", 1, "int8"),
    "U16": ("<u2", 2, "uint16"),
    "I16": ("<i2", 2, "int16"),
    "F16": ("<f2", 2, "float16"),
    "BF16": (None, 2, "bfloat16"),
    "U32": ("<u4", 4, "uint32"),
    "I32": ("<i4", 4, "int32"),
    "F32": ("<f4", 4, "float32"),
    "U64": ("<u8", 8, "uint64"),
    "I64": ("<i8", 8, "int64"),
    "F64": ("<f8", 8, "float64"),
    "F8_E4M3": (None, 1, "float8_e4m3fn"),
    "F8_E5M2": (None, 1, "float8_e5m2"),
}


@dataclass(frozen=True)
class TensorInfo:
    """One tensor: dtype, shape and absolute byte range inside the file buffer."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int


@dataclass(frozen=True)
class SafetensorsLayout:
    tensors: Mapping[str, TensorInfo]
    metadata: Mapping[str, str]
    data_start: int


def parse_layout(buf: memoryview | bytes | bytearray) -> SafetensorsLayout:
    """Validate a safetensors header against the buffer and return every tensor's range."""
    view = memoryview(buf).cast("B")
    if len(view) < 8:
        raise FormatError("safetensors: shorter than its 8-byte header length")
    n = int.from_bytes(view[:8], "little")
    if n > MAX_HEADER_LEN or 8 + n > len(view):
        raise FormatError("safetensors: header length exceeds the file")
    try:
        doc = json.loads(bytes(view[8 : 8 + n]).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise FormatError("safetensors: header is not UTF-8 JSON") from None
    if not isinstance(doc, dict):
        raise FormatError("safetensors: header must be a JSON object")
    data_start = 8 + n
    data_len = len(view) - data_start
    metadata: dict[str, str] = {}
    raw_meta = doc.pop("__metadata__", None)
    if raw_meta is not None:
        if not isinstance(raw_meta, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in raw_meta.items()
        ):
            raise FormatError("safetensors: __metadata__ must map strings to strings")
        metadata = dict(raw_meta)
    tensors: dict[str, TensorInfo] = {}
    for name, entry in doc.items():
        tensors[name] = _tensor(name, entry, data_start, data_len)
    return SafetensorsLayout(tensors, metadata, data_start)


def _tensor(name: str, entry: Any, data_start: int, data_len: int) -> TensorInfo:
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise FormatError(f"safetensors: tensor {name!r} needs exactly dtype, shape, data_offsets")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise FormatError(f"safetensors: tensor {name!r} has unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise FormatError(f"safetensors: tensor {name!r} has an invalid shape")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1] <= data_len
    ):
        raise FormatError(f"safetensors: tensor {name!r} has offsets outside the data")
    if (offsets[1] - offsets[0]) != math.prod(shape) * DTYPES[dtype][1]:
        raise FormatError(f"safetensors: tensor {name!r} byte length does not match its shape")
    return TensorInfo(name, dtype, tuple(shape), data_start + offsets[0], data_start + offsets[1])


def numpy_views(buf: memoryview, layout: SafetensorsLayout | None = None) -> dict[str, Any]:
    """name -> ``numpy.ndarray`` sharing memory with ``buf`` (no copy)."""
    import numpy as np

    layout = layout or parse_layout(buf)
    out: dict[str, Any] = {}
    for name, t in layout.tensors.items():
        np_dtype = DTYPES[t.dtype][0]
        if np_dtype is None:
            np_dtype = _extended_numpy_dtype(t.dtype)
        count = math.prod(t.shape)
        if count == 0:
            out[name] = np.empty(t.shape, dtype=np_dtype)
            continue
        out[name] = np.frombuffer(buf, dtype=np_dtype, count=count, offset=t.start).reshape(t.shape)
    return out


def _extended_numpy_dtype(dtype: str) -> Any:
    try:
        import ml_dtypes  # type: ignore[import-not-found]
    except ImportError:
        raise ConfigError(
            f"safetensors dtype {dtype} has no numpy equivalent; install ml_dtypes or use "
            "framework='torch'"
        ) from None
    return {
        "BF16": ml_dtypes.bfloat16,
        "F8_E4M3": ml_dtypes.float8_e4m3fn,
        "F8_E5M2": ml_dtypes.float8_e5m2,
    }[dtype]


def torch_views(buf: memoryview, layout: SafetensorsLayout | None = None) -> dict[str, Any]:
    """name -> ``torch.Tensor`` sharing memory with ``buf`` (no copy; CPU)."""
    try:
        import torch
    except ImportError:
        raise ConfigError("framework='torch' needs PyTorch installed") from None
    layout = layout or parse_layout(buf)
    out: dict[str, Any] = {}
    for name, t in layout.tensors.items():
        tdtype = getattr(torch, DTYPES[t.dtype][2])
        if t.end == t.start:
            out[name] = torch.empty(t.shape, dtype=tdtype)
            continue
        out[name] = torch.frombuffer(buf[t.start : t.end], dtype=tdtype).view(t.shape)
    return out
