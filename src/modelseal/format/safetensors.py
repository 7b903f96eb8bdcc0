"""The safetensors container: header parsing and validation, and tensor selection.

Partial sealing (:mod:`modelseal.format.partial`) encrypts tensors inside a safetensors
file, so it must trust the header's layout exactly: the data buffer must be covered by the
tensors without holes or overlaps, and the header is bounded (safetensors' own 100 MB
limit), because a sealed file is attacker-controlled input until authenticated.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from modelseal.errors import ConfigError, FormatError

__all__ = [
    "MAX_ST_HEADER",
    "is_nonnegative_int",
    "SafetensorsHeader",
    "TensorInfo",
    "no_duplicate_members",
    "pread_exact",
    "read_safetensors_header",
    "select_tensors",
]

#: safetensors' own limit on the JSON header
MAX_ST_HEADER: Final = 100_000_000
_LAYER = re.compile(r"(?:^|\.)(?:layers|h|blocks|layer)\.(\d+)\.")


@dataclass(frozen=True)
class TensorInfo:
    name: str
    start: int  # relative to the data buffer
    end: int


@dataclass(frozen=True)
class SafetensorsHeader:
    """A validated safetensors header: ``raw`` JSON bytes exactly as stored."""

    raw: bytes
    members: dict[str, Any]
    tensors: tuple[TensorInfo, ...]
    data_len: int

    @property
    def data_start(self) -> int:
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
        """Validate the JSON header of a safetensors file of ``total_len`` bytes."""
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
        tensors = []
        for name, info in members.items():
            if name == "__metadata__":
                continue
            if not isinstance(info, dict) or not isinstance(info.get("dtype"), str):
                raise FormatError(f"safetensors tensor {name!r}: missing dtype")
            shape, offsets = info.get("shape"), info.get("data_offsets")
            if not isinstance(shape, list) or not all(is_nonnegative_int(d) for d in shape):
                raise FormatError(f"safetensors tensor {name!r}: bad shape")
            if (
                not isinstance(offsets, list)
                or len(offsets) != 2
                or not all(is_nonnegative_int(o) for o in offsets)
                or offsets[0] > offsets[1]
            ):
                raise FormatError(f"safetensors tensor {name!r}: bad data_offsets")
            tensors.append(TensorInfo(name, offsets[0], offsets[1]))
        tensors.sort(key=lambda t: (t.start, t.end))
        data_len = total_len - 8 - len(raw)
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


def is_nonnegative_int(value: object) -> bool:
    """JSON integers only (``true`` is an int in Python, ``1.0`` is not an offset)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def no_duplicate_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
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


def read_safetensors_header(fd: int) -> SafetensorsHeader:
    """Read and validate the header of an open safetensors file."""
    total = os.fstat(fd).st_size
    if total < 8:
        raise FormatError("too short to be a safetensors file")
    (n,) = struct.unpack("<Q", pread_exact(fd, 8, 0))
    if n > MAX_ST_HEADER or 8 + n > total:
        raise FormatError("safetensors header length is out of range")
    return SafetensorsHeader.parse(pread_exact(fd, n, 8), total)


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
