"""Sealed format v1: the public API in one import (normative: docs/reference/format.md).

The implementation lives in small modules: :mod:`~modelseal.format.header` (byte layout),
:mod:`~modelseal.format.segments` (key schedule, commitment, per-segment AES-GCM),
:mod:`~modelseal.format.writer` (streaming and parallel sealing),
:mod:`~modelseal.format.reader` (random-access and parallel unsealing) and
:mod:`~modelseal.format.workers` (the segment thread pool). Loader, registry and owner code
import from here so the split stays an internal detail; the API is documented in
docs/reference/format.md ("API for readers").
"""

from __future__ import annotations

from modelseal.format.header import (
    COMMIT_LEN,
    DEFAULT_SEGMENT_SIZE,
    MAX_HEADER_LEN,
    PREAMBLE_LEN,
    TAG_LEN,
    Header,
    parse_preamble,
    sealed_size,
    segment_count,
)
from modelseal.format.options import SealOptions
from modelseal.format.reader import SealedReader, decrypt_whole, head_len, parse_head, read_header
from modelseal.format.segments import (
    DEK_LEN,
    INFO_PREFIX,
    FileDecryptor,
    FileEncryptor,
    segment_nonce,
)
from modelseal.format.workers import Progress
from modelseal.format.writer import SealWriter, seal_fd, seal_stream

__all__ = [
    "COMMIT_LEN",
    "DEFAULT_SEGMENT_SIZE",
    "DEK_LEN",
    "INFO_PREFIX",
    "MAX_HEADER_LEN",
    "PREAMBLE_LEN",
    "TAG_LEN",
    "FileDecryptor",
    "FileEncryptor",
    "Header",
    "Progress",
    "SealOptions",
    "SealWriter",
    "SealedReader",
    "decrypt_whole",
    "head_len",
    "parse_head",
    "parse_preamble",
    "read_header",
    "seal_fd",
    "seal_stream",
    "sealed_size",
    "segment_count",
    "segment_nonce",
]
