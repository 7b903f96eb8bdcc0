"""Tell a modelseal v1 file from a CNAP legacy file (first bytes and length) and from a
partially sealed safetensors file (its metadata)."""

from __future__ import annotations

import os
import struct
from typing import Literal

from modelseal.errors import FormatError
from modelseal.format.cnap import looks_like_cnap, parse_header
from modelseal.format.header import MAGIC
from modelseal.format.partial import is_partially_sealed

__all__ = ["SealedFormat", "detect_fd", "detect_prefix"]

SealedFormat = Literal["v1", "cnap", "partial"]

#: ``<2I`` 12, 16: the start of every CNAP header
CNAP_IV_TAG = struct.pack("<2I", 12, 16)


def detect_prefix(prefix: bytes, total_len: int) -> SealedFormat:
    """``"v1"`` if the v1 magic is present, ``"cnap"`` if the ``<3I`` header is consistent
    (iv_len 12, tag_len 16, data_len = length - 24); otherwise :class:`FormatError`."""
    if prefix[: len(MAGIC)] == MAGIC:
        return "v1"
    if looks_like_cnap(prefix, total_len):
        return "cnap"
    if prefix[:8] == CNAP_IV_TAG:
        parse_header(prefix, total_len)  # raises the precise CNAP error (length, > 4 GiB)
    raise FormatError("not a modelseal v1 or CNAP sealed file")


def detect_fd(fd: int) -> SealedFormat:
    """Detect the format of an open sealed file: v1, CNAP, or a partially sealed
    safetensors file (``__metadata__["modelseal.partial"]``)."""
    prefix = os.pread(fd, 16, 0)
    try:
        return detect_prefix(prefix, os.fstat(fd).st_size)
    except FormatError:
        if is_partially_sealed(fd):
            return "partial"
        raise
