"""Zero-copy tensors over a decrypted safetensors image in memory.

``safetensors.numpy.load``/``torch.load`` accept only ``bytes`` and copy every tensor (2x
peak memory, ~0.5-0.9 s/GiB). The header is validated by the one safetensors parser of the
format layer (:func:`modelseal.format.safetensors.parse_safetensors`: every range inside
the buffer and the size its dtype and shape imply); ``np.frombuffer`` / ``torch.frombuffer``
then build views in microseconds.
"""

from __future__ import annotations

import math
from typing import Any

from modelseal.errors import ConfigError
from modelseal.format.safetensors import SafetensorsHeader, parse_safetensors

#: safetensors dtype -> (numpy dtype name or None, torch dtype attribute or None)
VIEW_DTYPES: dict[str, tuple[str | None, str | None]] = {
    "BOOL": ("bool", "bool"),
    "U8": ("uint8", "uint8"),
    "I8": ("int8", "int8"),
    "U16": ("<u2", "uint16"),
    "I16": ("<i2", "int16"),
    "F16": ("<f2", "float16"),
    "BF16": (None, "bfloat16"),
    "U32": ("<u4", "uint32"),
    "I32": ("<i4", "int32"),
    "F32": ("<f4", "float32"),
    "U64": ("<u8", "uint64"),
    "I64": ("<i8", "int64"),
    "F64": ("<f8", "float64"),
    "C64": ("<c8", "complex64"),
    "F8_E4M3": (None, "float8_e4m3fn"),
    "F8_E5M2": (None, "float8_e5m2"),
    "F8_E8M0": (None, "float8_e8m0fnu"),
}
#: dtypes numpy lacks, provided by the ``ml_dtypes`` package
_ML_DTYPES = {"BF16": "bfloat16", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}


def _unviewable(dtype: str, framework: str) -> ConfigError:
    return ConfigError(f"safetensors dtype {dtype} has no {framework} view")


def numpy_views(buf: memoryview, header: SafetensorsHeader | None = None) -> dict[str, Any]:
    """name -> ``numpy.ndarray`` sharing memory with ``buf`` (no copy)."""
    import numpy as np

    header = header or parse_safetensors(buf)
    out: dict[str, Any] = {}
    for t in header.tensors:
        np_dtype: Any = VIEW_DTYPES.get(t.dtype, (None, None))[0]
        if np_dtype is None:
            np_dtype = _extended_numpy_dtype(t.dtype)
        count = math.prod(t.shape)
        if count == 0:
            out[t.name] = np.empty(t.shape, dtype=np_dtype)
            continue
        offset = header.data_start + t.start
        out[t.name] = np.frombuffer(buf, dtype=np_dtype, count=count, offset=offset).reshape(
            t.shape
        )
    return out


def _extended_numpy_dtype(dtype: str) -> Any:
    if dtype not in _ML_DTYPES:
        raise _unviewable(dtype, "numpy")
    try:
        import ml_dtypes  # type: ignore[import-not-found]
    except ImportError:
        raise ConfigError(
            f"safetensors dtype {dtype} has no numpy equivalent; install ml_dtypes or use "
            "framework='torch'"
        ) from None
    return getattr(ml_dtypes, _ML_DTYPES[dtype])


def torch_views(buf: memoryview, header: SafetensorsHeader | None = None) -> dict[str, Any]:
    """name -> ``torch.Tensor`` sharing memory with ``buf`` (no copy; CPU)."""
    try:
        import torch
    except ImportError:
        raise ConfigError("framework='torch' needs PyTorch installed") from None
    header = header or parse_safetensors(buf)
    out: dict[str, Any] = {}
    for t in header.tensors:
        name = VIEW_DTYPES.get(t.dtype, (None, None))[1]
        tdtype = getattr(torch, name, None) if name is not None else None
        if tdtype is None:
            raise _unviewable(t.dtype, "torch")
        if t.end == t.start:
            out[t.name] = torch.empty(t.shape, dtype=tdtype)
            continue
        start = header.data_start + t.start
        out[t.name] = torch.frombuffer(buf[start : header.data_start + t.end], dtype=tdtype).view(
            t.shape
        )
    return out
