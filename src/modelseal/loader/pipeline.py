"""Parallel ranged download pipelined with parallel decryption, in bounded memory.

Each of ``workers`` threads owns one buffer (a run of a few segments of ciphertext ‖ tag),
allocated once: memory is ``workers × request_bytes`` whatever the model size. A worker takes
the next run of segments, downloads it with one ranged GET (which resumes after a reset),
decrypts each segment in place with the file's decryptor and, once every segment of the run
has authenticated, writes the run's plaintext with one ``os.pwritev`` at its offset in the
temporary destination file. Socket reads, AES-GCM and ``pwritev`` all release the GIL, so
while one worker decrypts the others download: the stages overlap without a queue between
them.

The downloads can start before the key is there (:meth:`Pipeline.start`): the loader
attests and authenticates the manifest while the first runs arrive, then hands over the
decryptors and target files (:meth:`Pipeline.provide`). Buffers are zeroed when the workers
finish; plaintext of a run reaches the file only after
all its segments authenticated (``decrypt_segment_into`` wipes its output before raising).
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from modelseal.errors import Error, IntegrityError, UnsafeDestination
from modelseal.format.header import TAG_LEN, Header
from modelseal.loader.fetch import Fetcher

#: target bytes of ciphertext per ranged request (rounded to whole segments)
DEFAULT_REQUEST_BYTES = 16 << 20
#: most buffers one pwritev takes (Linux: 1024); bounds the segments of one run
_IOV_MAX = min(os.sysconf("SC_IOV_MAX") if "SC_IOV_MAX" in os.sysconf_names else 1024, 1024)


class SegmentDecryptor(Protocol):
    """What the pipeline needs from the format layer: authenticated random access."""

    def decrypt_segment_into(
        self, index: int, sealed: bytes | bytearray | memoryview, out: bytearray | memoryview
    ) -> None:
        """Authenticate and decrypt segment ``index``; ``out`` may alias ``sealed``."""


@dataclass(frozen=True)
class Download:
    """Where a sealed file is and how it is laid out: all a worker needs to fetch it."""

    url: str
    header: Header


@dataclass(frozen=True)
class Target:
    """What a worker needs to use what it fetched: the file's decryptor, its temp fd and
    how many plaintext bytes to keep (fewer than the header's ``size`` for a file sealed
    under hidden names: the zero padding after them is authenticated, then dropped)."""

    decryptor: SegmentDecryptor
    fd: int
    size: int


@dataclass(frozen=True)
class _Run:
    file: int
    download: Download
    first: int
    count: int


def _runs(downloads: Sequence[Download], per_request: Callable[[Header], int]) -> Iterator[_Run]:
    for i, download in enumerate(downloads):
        n = download.header.segment_count
        step = per_request(download.header)
        for first in range(0, n, step):
            yield _Run(i, download, first, min(step, n - first))


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
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
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
        self._provided = threading.Event()
        self._targets: Sequence[Target] = ()
        self._threads: list[threading.Thread] = []
        self._error: BaseException | None = None
        self.plain_bytes = 0
        self.sealed_bytes = 0

    def _per_request(self, header: Header) -> int:
        # a run is written with one pwritev of one buffer per segment: at most IOV_MAX
        return max(1, min(self.request_bytes // header.segment_size, _IOV_MAX))

    def start(self, downloads: Sequence[Download]) -> None:
        """Start downloading (no key needed yet); workers hold their first run until
        :meth:`provide` gives them the decryptors and target files."""
        if not downloads:
            self._provided.set()
            return
        cap = max(
            min(
                self._per_request(d.header) * (d.header.segment_size + TAG_LEN),
                d.header.sealed_size,
            )
            for d in downloads
        )
        runs = _runs(downloads, self._per_request)
        count = min(
            self.workers,
            sum(-(-d.header.segment_count // self._per_request(d.header)) for d in downloads),
        )
        try:
            for i in range(count):
                thread = threading.Thread(
                    target=self._worker, args=(runs, cap), name=f"modelseal-load-{i}"
                )
                thread.start()
                self._threads.append(thread)
        except BaseException:
            self.cancel()  # e.g. "can't start new thread" under a pids limit
            raise

    def check(self) -> None:
        """Raise a worker's error now (a blob missing or truncated), before asking for a key."""
        if self._error is not None:
            raise self._error

    def provide(self, targets: Sequence[Target]) -> None:
        """Hand over one target per download (same order); the workers go on decrypting."""
        self._targets = targets
        self._provided.set()

    def wait(self) -> None:
        """Wait for every worker; raise the first error. Interrupted: cancel, then re-raise."""
        try:
            for t in self._threads:
                while t.is_alive():
                    t.join(0.2)
        except BaseException:
            self.cancel()
            raise
        self.check()

    def cancel(self) -> None:
        """Stop every worker (buffers wiped) and wait for them; safe to call twice."""
        self._cancel.set()
        for t in self._threads:
            t.join()

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
                header = run.download.header
                start = header.segment_offset(run.first)
                last = run.first + run.count - 1
                end = header.segment_offset(last) + header.segment_sealed_len(last)
                self.fetcher.read_range(run.download.url, start, view[: end - start])
                while not self._provided.wait(0.05):
                    if self._cancel.is_set():
                        return
                target = self._targets[run.file]
                pos = 0
                plain = 0
                outs: list[memoryview] = []
                for index in range(run.first, run.first + run.count):
                    if self._cancel.is_set():
                        return
                    n_sealed = header.segment_sealed_len(index)
                    sealed = view[pos : pos + n_sealed]
                    out = view[pos : pos + n_sealed - TAG_LEN]
                    target.decryptor.decrypt_segment_into(index, sealed, out)
                    outs.append(out)
                    pos += n_sealed
                    plain += n_sealed - TAG_LEN
                # every segment of the run authenticated: one vectored write of the run
                offset = run.first * header.segment_size
                outs = _clip(outs, target.size - offset, run.download.url)
                plain = sum(len(out) for out in outs)
                if outs:
                    _pwritev_all(target.fd, outs, offset)
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


def _clip(parts: list[memoryview], keep: int, url: str) -> list[memoryview]:
    """The first ``keep`` bytes of ``parts``: the zero padding of a hidden-names file is
    dropped, after checking it is zeros as the format requires (``IntegrityError``)."""
    out: list[memoryview] = []
    for part in parts:
        if keep < len(part) and not _all_zero(part[max(0, keep) :]):
            raise IntegrityError(f"{url}: the padding after the file is not zero bytes")
        if keep > 0:
            out.append(part[:keep])
        keep -= len(part)
    return out


def _all_zero(view: memoryview) -> bool:
    """``view`` holds only zero bytes (compared in 1 MiB strides, no large allocation)."""
    for pos in range(0, len(view), len(_ZEROS)):
        chunk = view[pos : pos + len(_ZEROS)]
        if chunk != _ZEROS[: len(chunk)]:
            return False
    return True


_ZEROS = bytes(1 << 20)


def _zero(view: memoryview) -> None:
    """Wipe a buffer in 1 MiB strides (no allocation the size of the buffer)."""
    for pos in range(0, len(view), len(_ZEROS)):
        end = min(len(view), pos + len(_ZEROS))
        view[pos:end] = _ZEROS[: end - pos]


def _is_integrity(exc: BaseException) -> bool:
    return isinstance(exc, Error) and exc.exit_code == 5
