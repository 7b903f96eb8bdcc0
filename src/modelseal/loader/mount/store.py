"""Authenticated, cached, read-ahead access to the segments of a sealed model.

A read of plaintext ``[offset, offset + size)`` of one file needs the segments that overlap
it. Each segment is fetched as ciphertext ‖ tag (one ranged GET or one ``pread`` for a run
of consecutive segments), authenticated and decrypted by the file's
:class:`~modelseal.format.segments.FileDecryptor`, and only then put in a bounded LRU cache
of plaintext segments. A segment whose tag does not verify never enters the cache: its
readers get :class:`~modelseal.errors.DecryptionError` (the filesystem turns it into EIO),
the failure is logged and counted, and the next read of it tries again (the segments of the
same run that did authenticate are cached and served as usual).

Demand fetches run in the reader's own thread, so a random read never waits behind
read-ahead; read-ahead runs on a small pool and is bounded in bytes in flight. Readers that
want a segment already in flight wait for that fetch instead of starting another. Cached
buffers are pinned while a reader copies from them, and wiped when they leave the cache (or
at :meth:`SegmentStore.close`) once no reader holds them.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Protocol, TypeVar

from modelseal.crypto.aead import wipe
from modelseal.errors import DecryptionError, TransientError
from modelseal.format.fileio import pread_full
from modelseal.format.header import TAG_LEN, Header
from modelseal.format.segments import FileDecryptor
from modelseal.loader.fetch import Fetcher

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_CACHE_BYTES",
    "DEFAULT_READAHEAD_BYTES",
    "DEFAULT_RUN_BYTES",
    "HttpSource",
    "LocalSource",
    "MountedFile",
    "SealedSource",
    "SegmentStore",
    "Stats",
]

#: plaintext held in the segment cache (the kernel's page cache holds more, and can drop it)
DEFAULT_CACHE_BYTES = 64 << 20
#: plaintext fetched ahead of a sequential reader, at most, in flight at once
DEFAULT_READAHEAD_BYTES = 32 << 20
#: ciphertext per ranged request of read-ahead (rounded to whole segments, at least one)
DEFAULT_RUN_BYTES = 8 << 20
#: a waiter whose freshly fetched segment was evicted before it could copy asks again at
#: most this often (only a cache far smaller than the readers in flight gets there)
_MAX_REFETCH = 8


class SealedSource(Protocol):
    """Where the sealed bytes are: ``read(file, start, into)`` fills ``into`` exactly."""

    def read(self, file: int, start: int, into: memoryview) -> None:
        """Bytes ``[start, start + len(into))`` of sealed file number ``file``."""

    def close(self) -> None:
        """Release connections or descriptors."""


class HttpSource:
    """Sealed blobs in a registry: ranged GETs through the loader's pooled :class:`Fetcher`
    (keep-alive connection per thread, resumed and retried on transient failures)."""

    def __init__(self, fetcher: Fetcher, urls: Sequence[str]) -> None:
        self._fetcher = fetcher
        self._urls = tuple(urls)

    def read(self, file: int, start: int, into: memoryview) -> None:
        self._fetcher.read_range(self._urls[file], start, into)

    def close(self) -> None:
        self._fetcher.close()


class LocalSource:
    """Sealed files in a local directory, one open descriptor each, read with ``pread``."""

    def __init__(self, fds: Sequence[int]) -> None:
        self._fds = tuple(fds)

    def read(self, file: int, start: int, into: memoryview) -> None:
        pread_full(self._fds[file], into, start)

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)


@dataclass(frozen=True)
class MountedFile:
    """One plaintext file of the mount: its sealed header and its authenticated decryptor."""

    path: str
    header: Header
    decryptor: FileDecryptor


@dataclass
class Stats:
    """Counters of one mount (``user.modelseal.stats`` on the mount's root)."""

    reads: int = 0
    bytes_read: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    segments_fetched: int = 0
    sealed_bytes_fetched: int = 0
    readahead_runs: int = 0
    auth_failures: int = 0
    fetch_failures: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: int) -> None:
        with self.lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)

    def snapshot(self) -> dict[str, int]:
        with self.lock:
            return {k: v for k, v in vars(self).items() if isinstance(v, int)}


class _Entry:
    """A cached plaintext segment; ``pins`` readers are copying from it right now."""

    __slots__ = ("buf", "evicted", "pins", "size")

    def __init__(self, buf: bytearray, size: int) -> None:
        self.buf = buf
        self.size = size
        self.pins = 0
        self.evicted = False


_Key = tuple[int, int]
_T = TypeVar("_T")


class SegmentStore:
    """Plaintext ranges of the mounted files, each byte authenticated before it is returned.

    ``cache_bytes`` bounds the decrypted segments kept; ``readahead_bytes`` bounds the
    plaintext fetched ahead of sequential readers at once, on ``workers`` threads, in runs
    of about ``run_bytes`` of ciphertext.
    """

    def __init__(
        self,
        files: Sequence[MountedFile],
        source: SealedSource,
        *,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        readahead_bytes: int = DEFAULT_READAHEAD_BYTES,
        run_bytes: int = DEFAULT_RUN_BYTES,
        workers: int = 4,
    ) -> None:
        self.files = tuple(files)
        self.source = source
        self.stats = Stats()
        self.cache_bytes = cache_bytes
        self.readahead_bytes = readahead_bytes
        self.run_bytes = run_bytes
        self._lock = threading.Lock()
        self._cache: OrderedDict[_Key, _Entry] = OrderedDict()
        self._cached = 0
        self._inflight: dict[_Key, Future[_Entry]] = {}
        self._ahead = 0  # plaintext bytes of read-ahead in flight
        self._pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="ms-ra")
        self._closed = False
        #: wiped buffers of evicted segments, reused by later fetches (at most a few)
        self._spare: list[bytearray] = []
        self._spare_limit = 2 * max(1, workers)

    # -- reading -----------------------------------------------------------------------------

    def read(self, file: int, offset: int, size: int) -> bytes:
        """Plaintext ``[offset, offset + size)`` of ``file`` (shorter at the end of the file).

        Raises :class:`DecryptionError` if a segment in the range fails authentication and
        the fetch error (``TransientError``, ``FormatError``, ...) if it cannot be fetched;
        in both cases no byte of the range is returned.
        """
        header = self.files[file].header
        size = max(0, min(size, header.size - offset))
        if size == 0 or offset < 0:
            return b""
        seg = header.segment_size
        segments = header.segments_for_range(offset, size)
        if len(segments) == 1:  # the common case: one copy, straight out of the cache
            at = offset - segments[0] * seg
            data = self._use(file, segments[0], partial(_bytes_of, at, size))
            self.stats.add(reads=1, bytes_read=size)
            return data
        out = bytearray(size)
        view = memoryview(out)
        try:
            for index in segments:
                start = index * seg
                lo = max(offset, start)
                hi = min(offset + size, start + header.segment_plain_len(index))
                into = view[lo - offset : hi - offset]
                at = lo - start
                self._use(file, index, partial(_copy_into, into, at))
        except BaseException:
            wipe(out)
            raise
        self.stats.add(reads=1, bytes_read=size)
        return bytes(out)

    def _use(self, file: int, index: int, use: Callable[[memoryview], _T]) -> _T:
        """``use(plaintext of segment index)`` while the segment is pinned in the cache,
        fetching it first if it is not there."""
        key = (file, index)
        for _ in range(_MAX_REFETCH):
            entry = self._pin(key)
            if entry is None:
                self.stats.add(cache_misses=1)
                entry = self._wait_or_fetch(key)
                if not self._pin_entry(entry):
                    continue  # evicted and wiped before we got to it: ask again
            else:
                self.stats.add(cache_hits=1)
            try:
                return use(memoryview(entry.buf))
            finally:
                self._unpin(entry)
        raise TransientError("the segment cache is too small for the readers in flight")

    def _pin(self, key: _Key) -> _Entry | None:
        with self._lock:
            entry = self._cache.get(key)
            if entry is not None:
                self._cache.move_to_end(key)
                entry.pins += 1
            return entry

    def _pin_entry(self, entry: _Entry) -> bool:
        """Pin an entry a fetch handed over; False if it was evicted and wiped meanwhile."""
        with self._lock:
            if entry.buf is _WIPED:
                return False
            entry.pins += 1
            return True

    def _unpin(self, entry: _Entry) -> None:
        with self._lock:
            entry.pins -= 1
            if entry.evicted and entry.pins == 0:
                self._wipe_entry(entry)

    def _wipe_entry(self, entry: _Entry) -> None:
        """Wipe an entry no reader holds (lock held) and keep its buffer for a later fetch."""
        if entry.buf is not _WIPED:
            wipe(entry.buf)
            if not self._closed and len(self._spare) < self._spare_limit:
                self._spare.append(entry.buf)
            entry.buf = _WIPED

    def _buffer(self, size: int) -> bytearray:
        """A buffer for ``size`` bytes of ciphertext: a wiped one of that size if one is
        spare, else a new one. Reusing them keeps segment-sized allocations from
        fragmenting the heap of a long-running mount (its RSS then stays flat)."""
        with self._lock:
            for i, buf in enumerate(self._spare):
                if len(buf) == size:
                    return self._spare.pop(i)
        return bytearray(size)

    def _wait_or_fetch(self, key: _Key) -> _Entry:
        """The entry for ``key``: join a fetch in flight, or fetch a run from here."""
        with self._lock:
            future = self._inflight.get(key)
            if future is None:
                entry = self._cache.get(key)
                if entry is not None:  # arrived between the miss and now
                    return entry
                run = self._claim(key[0], key[1], 1)
                futures = [self._inflight[(key[0], i)] for i in run]
                future = futures[0]
            else:
                run = range(0)
        if run:
            self._fetch_run(key[0], run)
        return future.result()

    # -- fetching ----------------------------------------------------------------------------

    def _claim(self, file: int, first: int, limit: int) -> range:
        """Mark up to ``limit`` consecutive segments from ``first`` that are neither cached nor
        in flight as in flight (lock held); returns their indices."""
        count = self.files[file].header.segment_count
        end = first
        while (
            end < min(count, first + limit)
            and (file, end) not in self._cache
            and (file, end) not in self._inflight
        ):
            self._inflight[(file, end)] = Future()
            end += 1
        return range(first, end)

    def _fetch_run(self, file: int, run: range) -> None:
        """Fetch ``run`` with one request, authenticate each segment, cache the good ones and
        settle every segment's future (result or error)."""
        mounted = self.files[file]
        header = mounted.header
        start = header.segment_offset(run[0])
        end = header.segment_offset(run[-1]) + header.segment_sealed_len(run[-1])
        sealed = self._buffer(end - start)
        view = memoryview(sealed)
        try:
            self.source.read(file, start, view)
        except BaseException as exc:
            self.stats.add(fetch_failures=1)
            log.error("%s: fetching segments %d..%d failed: %s", mounted.path, run[0], run[-1], exc)
            self._settle(file, run, exc)
            if not isinstance(exc, Exception):
                raise
            return
        self.stats.add(segments_fetched=len(run), sealed_bytes_fetched=len(sealed))
        pos = 0
        try:
            for index in run:
                n = header.segment_sealed_len(index)
                segment = view[pos : pos + n]
                pos += n
                try:
                    # in place: the plaintext overwrites its ciphertext (wiped on failure)
                    mounted.decryptor.decrypt_segment_into(index, segment, segment[: n - TAG_LEN])
                except DecryptionError as exc:
                    self._auth_failed(file, index, exc)
                    continue
                # a run of one segment is adopted as the cache entry (no copy; its last 16
                # bytes, once the tag, are never read); a longer run is copied out segment by
                # segment and wiped below
                plain = sealed if len(run) == 1 else bytearray(segment[: n - TAG_LEN])
                self._insert(file, index, plain, n - TAG_LEN)
        finally:
            if len(run) > 1:
                wipe(sealed)

    def _auth_failed(self, file: int, index: int, exc: DecryptionError) -> None:
        mounted = self.files[file]
        header = mounted.header
        self.stats.add(auth_failures=1)
        log.error(
            "%s: segment %d (plaintext bytes %d..%d) failed authentication; reads of it return EIO",
            mounted.path,
            index,
            index * header.segment_size,
            index * header.segment_size + header.segment_plain_len(index),
        )
        self._settle(file, range(index, index + 1), exc)

    def _settle(self, file: int, run: range, exc: BaseException) -> None:
        with self._lock:
            futures = [self._inflight.pop((file, i), None) for i in run]
        for future in futures:
            if future is not None:
                future.set_exception(exc)

    def _insert(self, file: int, index: int, plain: bytearray, length: int) -> None:
        """Cache ``plain`` (its first ``length`` bytes are the segment's plaintext)."""
        entry = _Entry(plain, length)
        with self._lock:
            future = self._inflight.pop((file, index), None)
            if self._closed:
                self._wipe_entry(entry)
            else:
                self._cache[(file, index)] = entry
                self._cached += length
                self._evict()
        if future is not None:
            if entry.buf is _WIPED:
                future.set_exception(TransientError("the mount is closing"))
            else:
                future.set_result(entry)

    def _evict(self) -> None:
        """Drop least recently used segments beyond the budget (lock held); the newest one
        always stays."""
        while self._cached > self.cache_bytes and len(self._cache) > 1:
            _key, entry = self._cache.popitem(last=False)
            self._cached -= entry.size
            entry.evicted = True
            if entry.pins == 0:
                self._wipe_entry(entry)

    # -- read-ahead --------------------------------------------------------------------------

    def read_ahead(self, file: int, offset: int) -> None:
        """A sequential reader is at ``offset``: fetch the segments after it, up to the
        read-ahead budget, in runs on the pool (returns at once)."""
        header = self.files[file].header
        if offset >= header.size or self.readahead_bytes <= 0:
            return
        per_run = max(1, self.run_bytes // (header.segment_size + TAG_LEN))
        window = max(1, self.readahead_bytes // header.segment_size)
        first = offset // header.segment_size
        last = min(header.segment_count, first + window)
        runs: list[range] = []
        with self._lock:
            if self._closed:
                return
            index = first
            while index < last:
                if (file, index) in self._cache or (file, index) in self._inflight:
                    index += 1
                    continue
                budget = self.readahead_bytes - self._ahead
                limit = min(per_run, last - index, budget // header.segment_size)
                if limit <= 0:
                    break
                run = self._claim(file, index, limit)
                self._ahead += sum(header.segment_plain_len(i) for i in run)
                runs.append(run)
                index = run[-1] + 1
        for run in runs:
            self.stats.add(readahead_runs=1)
            self._pool.submit(self._ahead_run, file, run)

    def _ahead_run(self, file: int, run: range) -> None:
        header = self.files[file].header
        try:
            self._fetch_run(file, run)
        finally:
            with self._lock:
                self._ahead -= sum(header.segment_plain_len(i) for i in run)

    # -- lifetime ----------------------------------------------------------------------------

    def close(self) -> None:
        """Stop read-ahead, wipe every cached plaintext segment, close the source and the
        decryptors (their file keys are wiped). Safe to call twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            for entry in self._cache.values():
                entry.evicted = True
                if entry.pins == 0:
                    self._wipe_entry(entry)
            self._cache.clear()
            self._cached = 0
            self._spare.clear()
            pending = list(self._inflight.values())
            self._inflight.clear()
        for future in pending:
            if not future.done():
                future.set_exception(TransientError("the mount is closing"))
        self.source.close()
        for mounted in self.files:
            mounted.decryptor.close()

    @property
    def cached_bytes(self) -> int:
        with self._lock:
            return self._cached


#: the buffer of an entry once wiped (the entry can no longer be read)
_WIPED = bytearray()


def _bytes_of(at: int, size: int, buf: memoryview) -> bytes:
    return bytes(buf[at : at + size])


def _copy_into(into: memoryview, at: int, buf: memoryview) -> None:
    into[:] = buf[at : at + len(into)]
