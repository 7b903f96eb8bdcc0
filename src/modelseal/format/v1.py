"""Sealed format v1: per-file key schedule, segment encryption, streaming writer,
random-access and parallel reader.

Layout, key schedule and nonces are DESIGN.md section 4 (normative text:
docs/reference/format.md). Memory is constant in the file size: every reader and writer
works one segment at a time per worker, with buffers reused for the whole file.
"""

from __future__ import annotations

import hmac
import itertools
import mmap
import os
import secrets
import stat
import threading
from collections.abc import Callable, Iterator
from typing import BinaryIO, Final

from modelseal.crypto.aead import AesGcm, wipe
from modelseal.crypto.kdf import hkdf_sha256
from modelseal.crypto.secret import SecretBytes
from modelseal.errors import ConfigError, DecryptionError, Error, FormatError
from modelseal.format.header import (
    COMMIT_LEN,
    DEFAULT_SEGMENT_SIZE,
    MAX_HEADER_LEN,
    PREAMBLE_LEN,
    SALT_LEN,
    TAG_LEN,
    Header,
    build_header,
    parse_preamble,
    sealed_size,
    segment_count,
)

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
    "SealWriter",
    "SealedReader",
    "parse_preamble",
    "read_header",
    "seal_fd",
    "seal_stream",
    "sealed_size",
    "segment_count",
    "segment_nonce",
]

DEK_LEN: Final = 32
INFO_PREFIX: Final = b"modelseal/v1/file"

#: Called with a number of plaintext bytes just processed (from worker threads).
Progress = Callable[[int], None]

Buffer = bytes | bytearray | memoryview
_MAP_POPULATE: Final = getattr(mmap, "MAP_POPULATE", 0)


def segment_nonce(index: int, last: bool) -> bytes:
    """``I2OSP(index, 11) ‖ (0x01 if last else 0x00)``."""
    return index.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


def _check_dek(dek: SecretBytes) -> None:
    if len(dek) != DEK_LEN:
        raise ConfigError(f"a model key (DEK) must be {DEK_LEN} bytes, got {len(dek)}")


def _file_key(header: Header, dek: SecretBytes) -> tuple[AesGcm, bytes]:
    """``K ‖ C = HKDF-SHA256(DEK, salt, "modelseal/v1/file" ‖ H, 64)``."""
    _check_dek(dek)
    okm = hkdf_sha256(dek, salt=header.salt, info=INFO_PREFIX + header.digest, length=64)
    try:
        raw = okm.reveal()
        with SecretBytes(raw[:32]) as k:
            return AesGcm(k), raw[32:]
    finally:
        okm.wipe()


def _nbytes(buf: Buffer) -> int:
    return memoryview(buf).nbytes


class FileEncryptor:
    """Encrypts the segments of one file; ``commitment`` is the 32-byte value ``C``."""

    def __init__(self, header: Header, dek: SecretBytes) -> None:
        self.header = header
        self._aead, self.commitment = _file_key(header, dek)

    @property
    def prefix(self) -> bytes:
        """Everything before segment 0: preamble ‖ header ‖ commitment."""
        return self.header.preamble + self.header.raw + self.commitment

    def encrypt_segment_into(self, index: int, plain: Buffer, out: bytearray | memoryview) -> None:
        """Encrypt segment ``index``; ``out`` gets ``len(plain) + 16`` bytes (may alias)."""
        if _nbytes(plain) != self.header.segment_plain_len(index):
            raise ValueError(f"segment {index} must hold {self.header.segment_plain_len(index)} B")
        last = index == self.header.segment_count - 1
        self._aead.encrypt_into(segment_nonce(index, last), plain, out)

    def close(self) -> None:
        self._aead.close()


class FileDecryptor:
    """Checks the key commitment, then decrypts segments of one file. Thread-safe.

    Raises :class:`DecryptionError` at construction for a wrong key or a modified header,
    before any segment is touched.
    """

    def __init__(self, header: Header, commitment: bytes, dek: SecretBytes) -> None:
        if len(commitment) != COMMIT_LEN:
            raise FormatError("key commitment must be 32 bytes")
        self.header = header
        aead, expected = _file_key(header, dek)
        if not hmac.compare_digest(expected, commitment):
            aead.close()
            raise DecryptionError()
        self._aead = aead

    def decrypt_segment_into(self, index: int, sealed: Buffer, out: bytearray | memoryview) -> None:
        """Decrypt segment ``index`` (ciphertext ‖ tag) into ``out``.

        ``out`` must be exactly the segment's plaintext length; it may alias ``sealed``
        (in-place). On failure ``out`` is zeroed and :class:`DecryptionError` raised.
        """
        expected = self.header.segment_sealed_len(index)
        if _nbytes(sealed) != expected:
            raise FormatError(f"segment {index} must be {expected} bytes")
        if _nbytes(out) != expected - TAG_LEN:
            raise ValueError(f"output buffer for segment {index} must be {expected - TAG_LEN} B")
        last = index == self.header.segment_count - 1
        self._aead.decrypt_into(segment_nonce(index, last), sealed, out)

    def decrypt_segment(self, index: int, sealed: Buffer) -> bytearray:
        out = bytearray(self.header.segment_plain_len(index))
        self.decrypt_segment_into(index, sealed, out)
        return out

    def close(self) -> None:
        self._aead.close()


# --- low-level I/O helpers ------------------------------------------------------------------


def _pread_full(fd: int, view: memoryview, offset: int) -> None:
    got = 0
    while got < len(view):
        n = os.preadv(fd, [view[got:]], offset + got)
        if n == 0:
            raise FormatError("sealed file ended early (changed while reading?)")
        got += n


def _pwrite_full(fd: int, view: memoryview, offset: int) -> None:
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)


def _can_map(fd: int) -> bool:
    """Regular files are decrypted straight from the page cache through mmap windows."""
    return stat.S_ISREG(os.fstat(fd).st_mode) and hasattr(mmap, "MAP_SHARED")


def read_header(fd: int, *, check_length: bool = True) -> tuple[Header, bytes]:
    """Read and validate preamble, header and commitment from an open file; no key needed.

    With ``check_length`` the file length must equal the header's sealed size (truncation
    or appended bytes are refused before anything is decrypted).
    """
    pre = bytearray(PREAMBLE_LEN)
    _pread_full(fd, memoryview(pre), 0)
    header_len = parse_preamble(pre)
    rest = bytearray(header_len + COMMIT_LEN)
    _pread_full(fd, memoryview(rest), PREAMBLE_LEN)
    header = Header.parse(bytes(pre) + bytes(rest[:header_len]))
    if check_length:
        actual = os.fstat(fd).st_size
        if actual != header.sealed_size:
            raise FormatError(
                f"sealed file is {actual} bytes but its header implies {header.sealed_size}: "
                "truncated or extended"
            )
    return header, bytes(rest[header_len:])


def _parallel(
    count: int,
    workers: int,
    make_buffer: Callable[[], bytearray],
    work: Callable[[bytearray, int], int],
    progress: Progress | None,
) -> None:
    """Run ``work(buffer, i)`` for ``i`` in ``range(count)`` on ``workers`` threads.

    Each thread owns one reusable buffer, wiped when it finishes. The first error stops
    every thread and is re-raised (an authentication failure wins over others).
    """
    counter = itertools.count()
    stop = threading.Event()
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run() -> None:
        buf = make_buffer()
        try:
            while not stop.is_set():
                i = next(counter)
                if i >= count:
                    return
                done = work(buf, i)
                if progress is not None:
                    with lock:
                        progress(done)
        except BaseException as exc:
            stop.set()
            errors.append(exc)
        finally:
            wipe(buf)

    workers = max(1, min(workers, count))
    if workers == 1:
        run()
    else:
        threads = [threading.Thread(target=run, name=f"modelseal-{k}") for k in range(workers)]
        for t in threads:
            t.start()
        try:
            for t in threads:
                t.join()
        except BaseException:
            stop.set()
            for t in threads:
                t.join()
            raise
    if errors:
        auth = [e for e in errors if isinstance(e, DecryptionError)]
        raise (auth or errors)[0]


# --- writers ---------------------------------------------------------------------------------


def _new_header(
    *,
    size: int,
    key_id: str,
    path: str,
    segment_size: int,
    model: str | None,
    content_type: str | None,
    created: str | None,
    salt: bytes | None,
) -> Header:
    if salt is None:
        salt = secrets.token_bytes(SALT_LEN)
    return build_header(
        size=size,
        key_id=key_id,
        path=path,
        salt=salt,
        segment_size=segment_size,
        model=model,
        content_type=content_type,
        created=created,
    )


class SealWriter:
    """Streaming writer: declare the plaintext size, ``write()`` bytes in any chunks, ``close()``.

    Works on any writable binary stream (pipes, sockets, HTTP bodies); holds two segments.
    ``_salt`` is a test-only seam for deterministic vectors; never pass it in production.
    """

    def __init__(
        self,
        dst: BinaryIO,
        dek: SecretBytes,
        *,
        size: int,
        key_id: str,
        path: str,
        segment_size: int = DEFAULT_SEGMENT_SIZE,
        model: str | None = None,
        content_type: str | None = None,
        created: str | None = None,
        _salt: bytes | None = None,
    ) -> None:
        self.header = _new_header(
            size=size,
            key_id=key_id,
            path=path,
            segment_size=segment_size,
            model=model,
            content_type=content_type,
            created=created,
            salt=_salt,
        )
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
    *,
    size: int,
    key_id: str,
    path: str,
    segment_size: int = DEFAULT_SEGMENT_SIZE,
    model: str | None = None,
    content_type: str | None = None,
    created: str | None = None,
    progress: Progress | None = None,
    _salt: bytes | None = None,
) -> Header:
    """Seal exactly ``size`` bytes read from ``src`` into ``dst`` (sequential, one thread)."""
    with SealWriter(
        dst,
        dek,
        size=size,
        key_id=key_id,
        path=path,
        segment_size=segment_size,
        model=model,
        content_type=content_type,
        created=created,
        _salt=_salt,
    ) as writer:
        chunk = bytearray(min(segment_size, max(size, 1)))
        view = memoryview(chunk)
        try:
            remaining = size
            while remaining:
                n = src.readinto(view[: min(len(view), remaining)])  # type: ignore[attr-defined]
                if not n:
                    break
                writer.write(view[:n])
                remaining -= n
                if progress is not None:
                    progress(n)
            if src.read(1):
                raise FormatError(f"input is longer than the declared {size} bytes")
        finally:
            wipe(chunk)
    return writer.header


def seal_fd(
    src_fd: int,
    dst_fd: int,
    dek: SecretBytes,
    *,
    size: int,
    key_id: str,
    path: str,
    segment_size: int = DEFAULT_SEGMENT_SIZE,
    model: str | None = None,
    content_type: str | None = None,
    created: str | None = None,
    workers: int = 2,
    progress: Progress | None = None,
    _salt: bytes | None = None,
) -> Header:
    """Seal a regular file (``size`` bytes at offset 0 of ``src_fd``) with ``workers`` threads,
    each pread-encrypting-pwriting whole segments in place in one reusable buffer."""
    header = _new_header(
        size=size,
        key_id=key_id,
        path=path,
        segment_size=segment_size,
        model=model,
        content_type=content_type,
        created=created,
        salt=_salt,
    )
    enc = FileEncryptor(header, dek)
    try:
        _pwrite_full(dst_fd, memoryview(enc.prefix), 0)
        seg = header.segment_size
        base = header.data_offset

        def work(buf: bytearray, i: int) -> int:
            n = header.segment_plain_len(i)
            view = memoryview(buf)
            got = 0
            while got < n:
                k = os.preadv(src_fd, [view[got:n]], i * seg + got)
                if k == 0:
                    raise ConfigError(f"{path}: the file shrank while it was being sealed")
                got += k
            enc.encrypt_segment_into(i, view[:n], view[: n + TAG_LEN])
            _pwrite_full(dst_fd, view[: n + TAG_LEN], base + i * (seg + TAG_LEN))
            return n

        _parallel(
            header.segment_count,
            workers,
            lambda: bytearray(header.segment_plain_len(0) + TAG_LEN),
            work,
            progress,
        )
        os.ftruncate(dst_fd, header.sealed_size)
    finally:
        enc.close()
    return header


# --- reader ----------------------------------------------------------------------------------


class SealedReader:
    """Random-access, thread-safe reader of one sealed v1 file.

    Opening validates preamble, header and file length, derives the file key and checks
    the key commitment: a wrong key, modified header, truncation or extension fails here,
    before any segment is decrypted. Segments decrypt on demand; nothing unauthenticated is
    ever returned.
    """

    def __init__(self, fd: int, dek: SecretBytes, *, close_fd: bool = False) -> None:
        self._fd = fd
        self._close_fd = close_fd
        self.header, self.commitment = read_header(fd)
        self._dec = FileDecryptor(self.header, self.commitment, dek)
        self._local = threading.local()
        self._scratches: list[bytearray] = []
        self._lock = threading.Lock()
        self._mappable = _can_map(fd)

    @classmethod
    def open(cls, path: str | os.PathLike[str], dek: SecretBytes) -> SealedReader:
        """Open ``path``; the reader owns (and closes) the file descriptor."""
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            return cls(fd, dek, close_fd=True)
        except BaseException:
            os.close(fd)
            raise

    @property
    def size(self) -> int:
        return self.header.size

    def _scratch(self) -> bytearray:
        buf: bytearray | None = getattr(self._local, "buf", None)
        if buf is None:
            buf = bytearray(self.header.segment_plain_len(0) + TAG_LEN)
            self._local.buf = buf
            with self._lock:
                self._scratches.append(buf)
        return buf

    def _decrypt(self, index: int, scratch: memoryview, out: memoryview) -> None:
        """Decrypt segment ``index`` into ``out``; ``scratch`` holds a sealed segment.

        Regular files are read through a short-lived read-only mapping of just this
        segment (MAP_POPULATE: one syscall, no per-page faults), which saves the copy into
        ``scratch``; mapping only a window keeps RSS constant in the file size.
        """
        sealed_len = self.header.segment_sealed_len(index)
        offset = self.header.segment_offset(index)
        if self._mappable and sealed_len:
            base = offset - offset % mmap.ALLOCATIONGRANULARITY
            start = offset - base
            with (
                mmap.mmap(
                    self._fd,
                    start + sealed_len,
                    flags=mmap.MAP_SHARED | _MAP_POPULATE,
                    prot=mmap.PROT_READ,
                    offset=base,
                ) as mapped,
                memoryview(mapped) as whole,
                whole[start : start + sealed_len] as sealed,
            ):
                self._dec.decrypt_segment_into(index, sealed, out)
            return
        _pread_full(self._fd, scratch[:sealed_len], offset)
        self._dec.decrypt_segment_into(index, scratch[:sealed_len], out)

    def read_segment_into(self, index: int, out: bytearray | memoryview) -> None:
        """Decrypt segment ``index`` into ``out`` (its exact plaintext length)."""
        self._decrypt(index, memoryview(self._scratch()), memoryview(out))

    def readinto_range(self, offset: int, out: bytearray | memoryview) -> None:
        """Fill ``out`` with plaintext ``[offset, offset + len(out))``, decrypting only the
        segments that overlap it (whole segments go straight into ``out``)."""
        target = memoryview(out).cast("B")
        length = len(target)
        seg = self.header.segment_size
        try:
            for i in self.header.segments_for_range(offset, length):
                start = i * seg
                plain_len = self.header.segment_plain_len(i)
                lo = max(offset, start)
                hi = min(offset + length, start + plain_len)
                if lo == start and hi == start + plain_len:
                    self.read_segment_into(i, target[lo - offset : hi - offset])
                    continue
                scratch = memoryview(self._scratch())
                self._decrypt(i, scratch, scratch[:plain_len])
                target[lo - offset : hi - offset] = scratch[lo - start : hi - start]
        except Error:
            wipe(target)
            raise

    def read_range(self, offset: int, length: int) -> bytearray:
        """Plaintext bytes ``[offset, offset + length)``."""
        out = bytearray(length)
        self.readinto_range(offset, out)
        return out

    def iter_segments(self) -> Iterator[memoryview]:
        """Yield each segment's plaintext in order, in one reused buffer (copy to keep)."""
        buf = bytearray(self.header.segment_plain_len(0) + TAG_LEN)
        view = memoryview(buf)
        try:
            for i in range(self.header.segment_count):
                n = self.header.segment_plain_len(i)
                self._decrypt(i, view, view[:n])
                yield view[:n]
        finally:
            wipe(buf)

    def decrypt_to_fd(
        self,
        out_fd: int,
        *,
        out_offset: int = 0,
        workers: int = 2,
        progress: Progress | None = None,
    ) -> None:
        """Decrypt the whole file into ``out_fd`` at ``out_offset`` with ``workers`` threads.

        Each worker decrypts a segment into its own buffer and pwrites only authenticated
        plaintext. On failure some segments may already be written: the caller writes to a
        temporary file and deletes it (see owner.sealing).
        """
        header = self.header
        seg = header.segment_size
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(self._fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)

        def work(buf: bytearray, i: int) -> int:
            n = header.segment_plain_len(i)
            view = memoryview(buf)
            self._decrypt(i, view, view[:n])
            _pwrite_full(out_fd, view[:n], out_offset + i * seg)
            return n

        _parallel(
            header.segment_count,
            workers,
            lambda: bytearray(header.segment_plain_len(0) + TAG_LEN),
            work,
            progress,
        )

    def verify(self, *, workers: int = 2, progress: Progress | None = None) -> None:
        """Authenticate every segment; plaintext only ever lands in wiped scratch buffers."""
        header = self.header

        def work(buf: bytearray, i: int) -> int:
            n = header.segment_plain_len(i)
            view = memoryview(buf)
            self._decrypt(i, view, view[:n])
            return n

        _parallel(
            header.segment_count,
            workers,
            lambda: bytearray(header.segment_plain_len(0) + TAG_LEN),
            work,
            progress,
        )

    def close(self) -> None:
        """Wipe scratch buffers and the file key; close the fd if the reader owns it."""
        with self._lock:
            for buf in self._scratches:
                wipe(buf)
            self._scratches.clear()
        self._dec.close()
        if self._close_fd:
            self._close_fd = False
            os.close(self._fd)

    def __enter__(self) -> SealedReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
