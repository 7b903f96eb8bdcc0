"""Parallel ranged download pipelined with parallel decryption, in bounded memory.

Each of ``workers`` threads owns one buffer (a run of a few segments of ciphertext ‖ tag),
allocated once: memory is ``workers × request_bytes`` whatever the model size. A worker takes
the next run of segments, downloads it with one ranged GET (which resumes after a reset),
decrypts each segment in place with the file's decryptor and, once every segment of the run
has authenticated, writes the run's plaintext with one ``os.pwritev`` at its offset in the
temporary destination file. Socket reads, AES-GCM and ``pwritev`` all release the GIL, so
while one worker decrypts the others download: the stages overlap without a queue between
them.

Buffers are zeroed when the workers finish; plaintext of a run reaches the file only after
all its segments authenticated (``decrypt_segment_into`` wipes its output before raising).
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from modelseal.errors import Error, UnsafeDestination
from modelseal.format.header import TAG_LEN, Header
from modelseal.loader.fetch import Fetcher

#: target bytes of ciphertext per ranged request (rounded to whole segments)
DEFAULT_REQUEST_BYTES = 16 << 20


class SegmentDecryptor(Protocol):
    """What the pipeline needs from the format layer: authenticated random access."""

    def decrypt_segment_into(
        self, index: int, sealed: bytes | bytearray | memoryview, out: bytearray | memoryview
    ) -> None:
        """Authenticate and decrypt segment ``index``; ``out`` may alias ``sealed``."""


@dataclass(frozen=True)
class FileJob:
    """One sealed file to download, decrypt and write to ``fd`` (an open temp file)."""

    url: str
    header: Header
    decryptor: SegmentDecryptor
    fd: int


@dataclass(frozen=True)
class _Run:
    job: FileJob
    first: int
    count: int


def _runs(jobs: Sequence[FileJob], per_request: Callable[[Header], int]) -> Iterator[_Run]:
    for job in jobs:
        n = job.header.segment_count
        step = per_request(job.header)
        for first in range(0, n, step):
            yield _Run(job, first, min(step, n - first))


def _pwritev_all(fd: int, parts: list[memoryview], offset: int) -> None:
    """Write ``parts`` contiguously at ``offset`` (one ``pwritev`` unless it comes up short);
    a full destination is ``UnsafeDestination`` (exit 6)."""
    try:
        written = os.pwritev(fd, parts, offset)
        for part in parts:
            rest = part[written:]
            written = max(0, written - len(part))
            while rest:
                done = os.pwrite(fd, rest, offset + len(part) - len(rest))
                rest = rest[done:]
            offset += len(part)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise UnsafeDestination("the destination ran out of space") from None
        raise


class Pipeline:
    """Runs the download → decrypt → pwrite stages over many files with ``workers`` threads."""

    def __init__(
        self,
        fetcher: Fetcher,
        *,
        workers: int,
        request_bytes: int = DEFAULT_REQUEST_BYTES,
        on_progress: Callable[[int], None] | None = None,
    ) -> None:
        self.fetcher = fetcher
        self.workers = max(1, workers)
        self.request_bytes = request_bytes
        self.on_progress = on_progress
        self._lock = threading.Lock()
        self._cancel = threading.Event()
        self._error: BaseException | None = None
        self.plain_bytes = 0
        self.sealed_bytes = 0

    def _per_request(self, header: Header) -> int:
        return max(1, self.request_bytes // header.segment_size)

    def run(self, jobs: Sequence[FileJob]) -> None:
        """Process every segment of every job; raise the first error after all workers stop."""
        if not jobs:
            return
        cap = max(
            min(
                self._per_request(j.header) * (j.header.segment_size + TAG_LEN),
                j.header.sealed_size,
            )
            for j in jobs
        )
        runs = _runs(jobs, self._per_request)
        count = min(
            self.workers,
            sum(-(-j.header.segment_count // self._per_request(j.header)) for j in jobs),
        )
        threads = [
            threading.Thread(target=self._worker, args=(runs, cap), name=f"modelseal-load-{i}")
            for i in range(count)
        ]
        for t in threads:
            t.start()
        try:
            for t in threads:
                while t.is_alive():
                    t.join(0.2)
        except BaseException:
            self._cancel.set()
            for t in threads:
                t.join()
            raise
        if self._error is not None:
            raise self._error

    def _next(self, runs: Iterator[_Run]) -> _Run | None:
        with self._lock:
            if self._cancel.is_set():
                return None
            return next(runs, None)

    def _fail(self, exc: BaseException) -> None:
        with self._lock:
            # keep the first error, except that integrity beats transient noise
            if self._error is None or (
                isinstance(exc, Error) and exc.exit_code == 5 and not _is_integrity(self._error)
            ):
                self._error = exc
        self._cancel.set()

    def _worker(self, runs: Iterator[_Run], cap: int) -> None:
        buf = bytearray(cap)
        view = memoryview(buf)
        try:
            while (run := self._next(runs)) is not None:
                header = run.job.header
                start = header.segment_offset(run.first)
                last = run.first + run.count - 1
                end = header.segment_offset(last) + header.segment_sealed_len(last)
                self.fetcher.read_range(run.job.url, start, view[: end - start])
                pos = 0
                plain = 0
                outs: list[memoryview] = []
                for index in range(run.first, run.first + run.count):
                    if self._cancel.is_set():
                        return
                    n_sealed = header.segment_sealed_len(index)
                    sealed = view[pos : pos + n_sealed]
                    out = view[pos : pos + n_sealed - TAG_LEN]
                    run.job.decryptor.decrypt_segment_into(index, sealed, out)
                    outs.append(out)
                    pos += n_sealed
                    plain += n_sealed - TAG_LEN
                # every segment of the run authenticated: one vectored write of the run
                _pwritev_all(run.job.fd, outs, run.first * header.segment_size)
                with self._lock:
                    self.plain_bytes += plain
                    self.sealed_bytes += pos
                if self.on_progress is not None:
                    self.on_progress(plain)
        except BaseException as exc:
            self._fail(exc)
        finally:
            _zero(view)
            view.release()


_ZEROS = bytes(1 << 20)


def _zero(view: memoryview) -> None:
    """Wipe a buffer in 1 MiB strides (no allocation the size of the buffer)."""
    for pos in range(0, len(view), len(_ZEROS)):
        end = min(len(view), pos + len(_ZEROS))
        view[pos:end] = _ZEROS[: end - pos]


def _is_integrity(exc: BaseException) -> bool:
    return isinstance(exc, Error) and exc.exit_code == 5
