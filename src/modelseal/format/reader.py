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

__all__ = ["SealedReader", "decrypt_whole", "head_len", "parse_head", "read_header"]


def head_len(preamble: bytes | bytearray | memoryview) -> int:
    """Bytes before segment 0 (preamble, header, commitment), from the first 14 bytes.

    A reader fetching a file over the network asks for this much next; checking magic and
    version first means a wrong file costs 14 bytes, not a header's worth.
    """
    return PREAMBLE_LEN + parse_preamble(preamble) + COMMIT_LEN


def parse_head(
    prefix: bytes | bytearray | memoryview, total: int | None = None
) -> tuple[Header, bytes]:
    """Header and key commitment from the first :func:`head_len` (or more) bytes of a file.

    With ``total`` (the file's length) the length must be exactly what the header implies:
    truncated or extended files are refused before anything is decrypted. Only the parsed
    fields and the 32-byte commitment are kept.
    """
    header = Header.parse(prefix)
    if total is not None and total != header.sealed_size:
        raise FormatError(
            f"sealed file is {total} bytes but its header implies {header.sealed_size}: "
            "truncated or extended"
        )
    commitment = bytes(prefix[header.prefix_len : header.prefix_len + COMMIT_LEN])
    if len(commitment) != COMMIT_LEN:
        raise FormatError("file ends inside the key commitment")
    return header, commitment


def read_header(fd: int, *, check_length: bool = True) -> tuple[Header, bytes]:
    """Read and validate preamble, header and commitment from an open file; no key needed.

    With ``check_length`` the file length must equal the header's sealed size (truncation
    or appended bytes are refused before anything is decrypted).
    """
    pre = bytearray(PREAMBLE_LEN)
    pread_full(fd, memoryview(pre), 0)
    prefix = bytearray(head_len(pre))
    prefix[:PREAMBLE_LEN] = pre
    pread_full(fd, memoryview(prefix)[PREAMBLE_LEN:], PREAMBLE_LEN)
    return parse_head(prefix, os.fstat(fd).st_size if check_length else None)


def decrypt_whole(
    sealed: bytes | bytearray | memoryview, header: Header, commitment: bytes, dek: SecretBytes
) -> bytearray:
    """Authenticate and decrypt a whole sealed file held in memory (a small one: the
    manifest); ``sealed`` is the complete file, as :func:`parse_head` checked it."""
    view = memoryview(sealed)
    if len(view) != header.sealed_size:
        raise FormatError(
            f"sealed file is {len(view)} bytes but its header implies {header.sealed_size}: "
            "truncated or extended"
        )
    plain = bytearray(header.size)
    out = memoryview(plain)
    dec = FileDecryptor(header, commitment, dek)
    try:
        for i in range(header.segment_count):
            off = header.segment_offset(i)
            start = i * header.segment_size
            n = header.segment_plain_len(i)
            dec.decrypt_segment_into(i, view[off : off + n + TAG_LEN], out[start : start + n])
    except Error:
        wipe(plain)  # earlier segments authenticated, but the file as a whole did not
        raise
    finally:
        dec.close()
    return plain


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
