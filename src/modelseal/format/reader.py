"""Sealed format v1 reader: header validation without a key, then random-access,
thread-safe, authenticated decryption of segments.

Segments are read with ``pread`` into a reused per-thread buffer and decrypted in place.
The file is deliberately not mmapped: if another process truncates a mapped file, a read
of the missing pages kills this process with SIGBUS, whereas ``pread`` just returns fewer
bytes, which becomes a FormatError (docs/reference/format.md, "Reading"; measured equal
speed).
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Callable, Iterator

from modelseal.crypto.aead import wipe
from modelseal.crypto.secret import SecretBytes
from modelseal.errors import Error, FormatError
from modelseal.format.fileio import pread_full, pwrite_full
from modelseal.format.header import COMMIT_LEN, PREAMBLE_LEN, TAG_LEN, Header, parse_preamble
from modelseal.format.segments import FileDecryptor
from modelseal.format.workers import Progress, run_segments

__all__ = ["SealedReader", "read_header"]


def read_header(fd: int, *, check_length: bool = True) -> tuple[Header, bytes]:
    """Read and validate preamble, header and commitment from an open file; no key needed.

    With ``check_length`` the file length must equal the header's sealed size (truncation
    or appended bytes are refused before anything is decrypted).
    """
    pre = bytearray(PREAMBLE_LEN)
    pread_full(fd, memoryview(pre), 0)
    header_len = parse_preamble(pre)
    rest = bytearray(header_len + COMMIT_LEN)
    pread_full(fd, memoryview(rest), PREAMBLE_LEN)
    header = Header.parse(bytes(pre) + bytes(rest[:header_len]))
    if check_length:
        actual = os.fstat(fd).st_size
        if actual != header.sealed_size:
            raise FormatError(
                f"sealed file is {actual} bytes but its header implies {header.sealed_size}: "
                "truncated or extended"
            )
    return header, bytes(rest[header_len:])


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

    @classmethod
    def open(cls, path: str | os.PathLike[str], dek: SecretBytes) -> SealedReader:
        """Open ``path``; the reader owns (and closes) the file descriptor."""
        # O_NONBLOCK: opening a FIFO must not wait for a writer; then regular files only
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise FormatError(f"{os.fspath(path)!s} is not a regular file")
            os.set_blocking(fd, True)
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
        """Read segment ``index`` (ciphertext ‖ tag) into ``scratch`` and decrypt it into
        ``out``, which may alias ``scratch`` (decryption in place, no extra copy)."""
        sealed_len = self.header.segment_sealed_len(index)
        pread_full(self._fd, scratch[:sealed_len], self.header.segment_offset(index))
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

    def _decrypt_all(
        self,
        workers: int,
        progress: Progress | None,
        sink: Callable[[memoryview, int], None] | None,
    ) -> None:
        """Authenticate and decrypt every segment on ``workers`` threads, handing each
        plaintext with its offset to ``sink`` (None: discard after authentication)."""
        header = self.header

        def work(buf: bytearray, i: int) -> int:
            n = header.segment_plain_len(i)
            view = memoryview(buf)
            self._decrypt(i, view, view[:n])
            if sink is not None:
                sink(view[:n], i * header.segment_size)
            return n

        run_segments(header, workers, work, progress)

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
        temporary file and deletes it (see owner.outputs).
        """
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(self._fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        self._decrypt_all(
            workers, progress, lambda plain, at: pwrite_full(out_fd, plain, out_offset + at)
        )

    def verify(self, *, workers: int = 2, progress: Progress | None = None) -> None:
        """Authenticate every segment; plaintext only ever lands in wiped scratch buffers."""
        self._decrypt_all(workers, progress, None)

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
