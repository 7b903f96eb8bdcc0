"""The safetensors container: the one header parser, and tensor selection.

Two kinds of callers trust this header exactly. Partial sealing
(:mod:`modelseal.format.partial`) encrypts tensors in place, so the data buffer must be
covered by the tensors without holes or overlaps; the in-memory SDK
(:mod:`modelseal.loader.safetensors_view`) builds zero-copy numpy/torch views on the byte
ranges, so every range must lie inside the buffer and match its dtype and shape. Both read
files that are attacker-controlled until authenticated, so one parser applies every check:

* an 8-byte little-endian header length N, bounded by safetensors' own 100 MB limit and
  by the file;
* N bytes of UTF-8 JSON: an object without duplicate members;
* an optional ``__metadata__`` mapping strings to strings;
* every tensor exactly ``{"dtype", "shape", "data_offsets"}``: a known dtype, a shape of
  non-negative integers, ``[begin, end]`` offsets whose length is the shape's byte size;
* the tensors cover the data buffer exactly (no hole, no overlap, nothing after the last).

Every violation is a :class:`~modelseal.errors.FormatError`. Nothing here imports numpy or
torch: the loader inside the TEE stays lean.
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from modelseal.errors import ConfigError, FormatError

__all__ = [
    "DTYPE_BITS",
    "MAX_ST_HEADER",
    "SafetensorsHeader",
    "TensorInfo",
    "is_nonnegative_int",
    "no_duplicate_members",
    "parse_safetensors",
    "pread_exact",
    "read_safetensors_header",
    "select_tensors",
]

#: safetensors' own limit on the JSON header
MAX_ST_HEADER: Final = 100_000_000
_LAYER = re.compile(r"(?:^|\.)(?:layers|h|blocks|layer)\.(\d+)\.")

#: every dtype of the safetensors specification -> bits per element
DTYPE_BITS: Final[dict[str, int]] = {
    "BOOL": 8,
    "U8": 8,
    "I8": 8,
    "F8_E4M3": 8,
    "F8_E5M2": 8,
    "F8_E8M0": 8,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
    "U16": 16,
    "I16": 16,
    "F16": 16,
    "BF16": 16,
    "U32": 32,
    "I32": 32,
    "F32": 32,
    "U64": 64,
    "I64": 64,
    "F64": 64,
    "C64": 64,
}
_TENSOR_MEMBERS: Final = frozenset({"dtype", "shape", "data_offsets"})


@dataclass(frozen=True)
class TensorInfo:
    """One tensor: dtype, shape and byte range relative to the start of the data buffer."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int


@dataclass(frozen=True)
class SafetensorsHeader:
    """A validated safetensors header: ``raw`` JSON bytes exactly as stored.

    ``tensors`` are in data-buffer order (by offset).
    """

    raw: bytes
    members: dict[str, Any]
    tensors: tuple[TensorInfo, ...]
    data_len: int

    @property
    def data_start(self) -> int:
        """Offset of the data buffer in the file: ``8 + N``."""
        return 8 + len(self.raw)

    @property
    def metadata(self) -> dict[str, str]:
        meta = self.members.get("__metadata__") or {}
        return dict(meta)

    def tensor(self, name: str) -> TensorInfo:
        for t in self.tensors:
            if t.name == name:
                return t
        raise ConfigError(f"no tensor named {name!r}")

    @classmethod
    def parse(cls, raw: bytes, total_len: int) -> SafetensorsHeader:
        """Validate the JSON header ``raw`` of a safetensors file of ``total_len`` bytes."""
        data_len = total_len - 8 - len(raw)
        if data_len < 0:
            raise FormatError("safetensors header length exceeds the file")
        try:
            members = json.loads(raw.decode("utf-8"), object_pairs_hook=no_duplicate_members)
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise FormatError("safetensors header is not valid UTF-8 JSON") from None
        if not isinstance(members, dict):
            raise FormatError("safetensors header must be a JSON object")
        meta = members.get("__metadata__")
        if meta is not None and (
            not isinstance(meta, dict)
            or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items())
        ):
            raise FormatError("safetensors __metadata__ must map strings to strings")
        tensors = sorted(
            (_tensor(name, entry) for name, entry in members.items() if name != "__metadata__"),
            key=lambda t: (t.start, t.end),
        )
        pos = 0
        for t in tensors:
            if t.start != pos:
                raise FormatError("safetensors data buffer has holes or overlapping tensors")
            pos = t.end
        if pos != data_len:
            raise FormatError(
                f"safetensors data buffer is {data_len} bytes but the tensors cover {pos}"
            )
        return cls(bytes(raw), members, tuple(tensors), data_len)


def _tensor(name: str, entry: object) -> TensorInfo:
    if not isinstance(entry, dict) or set(entry) != _TENSOR_MEMBERS:
        raise FormatError(
            f"safetensors tensor {name!r}: needs exactly dtype, shape and data_offsets"
        )
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
        raise FormatError(f"safetensors tensor {name!r}: unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(is_nonnegative_int(d) for d in shape):
        raise FormatError(f"safetensors tensor {name!r}: bad shape")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(is_nonnegative_int(o) for o in offsets)
        or offsets[0] > offsets[1]
    ):
        raise FormatError(f"safetensors tensor {name!r}: bad data_offsets")
    bits = math.prod(shape) * DTYPE_BITS[dtype]
    if bits % 8 or offsets[1] - offsets[0] != bits // 8:
        raise FormatError(f"safetensors tensor {name!r}: byte length does not match its shape")
    return TensorInfo(name, dtype, tuple(shape), offsets[0], offsets[1])


def is_nonnegative_int(value: object) -> bool:
    """JSON integers only (``true`` is an int in Python, ``1.0`` is not an offset)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def no_duplicate_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook`` refusing duplicate members (which would make two readers of
    the same bytes disagree: one keeps the first, another the last)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise FormatError(f"duplicate JSON member {key!r}")
        out[key] = value
    return out


def pread_exact(fd: int, n: int, offset: int) -> bytes:
    data = os.pread(fd, n, offset)
    if len(data) != n:
        raise FormatError("file ended early")
    return data


def _header_len(prefix: bytes | memoryview, total: int) -> int:
    if total < 8:
        raise FormatError("too short to be a safetensors file")
    (n,) = struct.unpack("<Q", prefix[:8])
    if n > MAX_ST_HEADER or 8 + n > total:
        raise FormatError("safetensors header length is out of range")
    return int(n)


def read_safetensors_header(fd: int) -> SafetensorsHeader:
    """Read and validate the header of an open safetensors file."""
    total = os.fstat(fd).st_size
    n = _header_len(pread_exact(fd, 8, 0) if total >= 8 else b"", total)
    return SafetensorsHeader.parse(pread_exact(fd, n, 8), total)


def parse_safetensors(buf: bytes | bytearray | memoryview) -> SafetensorsHeader:
    """Validate the header of a safetensors image held in memory (the whole file)."""
    view = memoryview(buf).cast("B")
    n = _header_len(view, len(view))
    return SafetensorsHeader.parse(bytes(view[8 : 8 + n]), len(view))


def select_tensors(
    header: SafetensorsHeader, patterns: Sequence[str] = (), *, last_layers: int = 0
) -> list[str]:
    """Names matching any glob in ``patterns`` (e.g. ``lm_head.*``) plus every tensor of the
    last ``last_layers`` numbered layers (``...layers.<i>.``, ``h.<i>.``, ``blocks.<i>.``)."""
    names = {
        t.name for t in header.tensors if any(fnmatch.fnmatchcase(t.name, p) for p in patterns)
    }
    if last_layers > 0:
        layer_of = {t.name: int(m.group(1)) for t in header.tensors if (m := _LAYER.search(t.name))}
        if not layer_of:
            raise ConfigError("no numbered layers found (expected names like model.layers.7.*)")
        top = sorted(set(layer_of.values()))[-last_layers:]
        names |= {n for n, layer in layer_of.items() if layer in top}
    if not names:
        raise ConfigError("no tensor matches the selection; nothing would be sealed")
    return [t.name for t in header.tensors if t.name in names]
