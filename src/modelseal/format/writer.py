"""Sealed format v1 writers: a streaming writer for any byte stream and a parallel sealer
for regular files.

Both hold at most a couple of segments in memory (constant in the file size). The
``_salt`` keyword is a test-only seam for deterministic vectors.
"""

from __future__ import annotations

import os
from typing import BinaryIO

from modelseal.crypto.aead import wipe
from modelseal.crypto.secret import SecretBytes
from modelseal.errors import ConfigError, FormatError
from modelseal.format.fileio import pwrite_full, read_exactly
from modelseal.format.header import TAG_LEN, Header
from modelseal.format.options import SealOptions
from modelseal.format.segments import Buffer, FileEncryptor
from modelseal.format.workers import run_segments

__all__ = ["SealWriter", "seal_fd", "seal_stream"]


class SealWriter:
    """Streaming writer: declare the plaintext size, ``write()`` bytes in any chunks, ``close()``.

    Works on any writable binary stream (pipes, sockets, HTTP bodies); holds two segments.
    ``_salt`` is a test-only seam for deterministic vectors; never pass it in production.
    """

    def __init__(
        self,
        dst: BinaryIO,
        dek: SecretBytes,
        options: SealOptions,
        *,
        size: int,
        path: str,
        _salt: bytes | None = None,
    ) -> None:
        self.header = options.header(size=size, path=path, salt=_salt)
        self._enc = FileEncryptor(self.header, dek)
        self._dst = dst
        self._buf = bytearray(self.header.segment_plain_len(0) + TAG_LEN)
        self._fill = 0
        self._index = 0
        self._written = 0
        self._closed = False
        dst.write(self._enc.prefix)

    def _flush_segment(self) -> None:
        n = self._fill
        view = memoryview(self._buf)
        self._enc.encrypt_segment_into(self._index, view[:n], view[: n + TAG_LEN])
        self._dst.write(view[: n + TAG_LEN])
        self._index += 1
        self._fill = 0

    def write(self, data: Buffer) -> int:
        """Append plaintext; refuses more bytes than the declared size."""
        src = memoryview(data).cast("B")
        if self._closed:
            raise ValueError("writer is closed")
        if self._written + len(src) > self.header.size:
            raise FormatError("more plaintext than the declared size")
        pos = 0
        while pos < len(src):
            want = self.header.segment_plain_len(self._index) - self._fill
            take = min(want, len(src) - pos)
            self._buf[self._fill : self._fill + take] = src[pos : pos + take]
            self._fill += take
            pos += take
            if self._fill == self.header.segment_plain_len(self._index):
                self._flush_segment()
        self._written += len(src)
        return len(src)

    def close(self) -> Header:
        """Write the final segment; the stream must have delivered exactly ``size`` bytes."""
        if self._closed:
            return self.header
        try:
            if self._written != self.header.size:
                raise FormatError(
                    f"input ended after {self._written} of {self.header.size} declared bytes"
                )
            if self._index < self.header.segment_count:  # only the empty file's segment
                self._flush_segment()
        finally:
            self._closed = True
            wipe(self._buf)
            self._enc.close()
        return self.header

    def __enter__(self) -> SealWriter:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self._closed = True
            wipe(self._buf)
            self._enc.close()


def seal_stream(
    src: BinaryIO,
    dst: BinaryIO,
    dek: SecretBytes,
    options: SealOptions,
    *,
    size: int,
    path: str,
    _salt: bytes | None = None,
) -> Header:
    """Seal exactly ``size`` bytes read from ``src`` into ``dst`` (sequential, one thread)."""
    progress = options.progress
    with SealWriter(dst, dek, options, size=size, path=path, _salt=_salt) as writer:
        for chunk in read_exactly(src, size, options.segment_size):
            writer.write(chunk)
            if progress is not None:
                progress(len(chunk))
    return writer.header


def seal_fd(
    src_fd: int,
    dst_fd: int,
    dek: SecretBytes,
    options: SealOptions,
    *,
    size: int,
    path: str,
    pad_to: int | None = None,
    _salt: bytes | None = None,
) -> Header:
    """Seal a regular file (``size`` bytes at offset 0 of ``src_fd``) with
    ``options.workers`` threads, each pread-encrypting-pwriting whole segments in place in
    one reusable buffer. ``pad_to`` (hidden names) seals that many bytes instead: the file
    followed by zero bytes."""
    if pad_to is not None and pad_to < size:
        raise ValueError("pad_to is smaller than the file")
    header = options.header(size=size if pad_to is None else pad_to, path=path, salt=_salt)
    enc = FileEncryptor(header, dek)
    try:
        pwrite_full(dst_fd, memoryview(enc.prefix), 0)
        seg = header.segment_size
        base = header.data_offset

        def work(buf: bytearray, i: int) -> int:
            n = header.segment_plain_len(i)
            view = memoryview(buf)
            have = max(0, min(n, size - i * seg))  # file bytes in this segment; rest is padding
            view[have:n] = bytes(n - have)
            got = 0
            while got < have:
                k = os.preadv(src_fd, [view[got:have]], i * seg + got)
                if k == 0:
                    raise ConfigError(f"{path}: the file shrank while it was being sealed")
                got += k
            enc.encrypt_segment_into(i, view[:n], view[: n + TAG_LEN])
            pwrite_full(dst_fd, view[: n + TAG_LEN], base + i * (seg + TAG_LEN))
            return n

        run_segments(header, options.workers, work, options.progress)
        os.ftruncate(dst_fd, header.sealed_size)
    finally:
        enc.close()
    return header
