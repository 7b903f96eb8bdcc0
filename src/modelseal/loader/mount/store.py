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
import mmap
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
#: plaintext ahead of a sequential reader (cached or in flight): the read-ahead window
DEFAULT_READAHEAD_BYTES = 32 << 20
#: ciphertext per ranged request of read-ahead (whole segments, at least one): four 4 MiB
#: segments and their tags, the loader's request size; fewer, larger requests cost the
#: registry and this process less CPU per byte than one request per segment
DEFAULT_RUN_BYTES = (16 << 20) + 4 * TAG_LEN
#: run buffers with no plaintext left kept for later fetches, in runs' worth of bytes (the
#: newest are kept: sequential reads reuse them without allocating; more only costs RSS)
SPARE_RUNS = 2
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


class _Run:
    """One fetched run's buffer: ciphertext ‖ tag of consecutive segments, each decrypted in
    place. The cache entries of its segments are slices of it (no copy); ``live`` counts
    the segments whose plaintext may still be in it. At zero (all evicted and wiped, or
    failed) the buffer can serve another fetch."""

    __slots__ = ("buf", "live")

    def __init__(self, buf: mmap.mmap, live: int) -> None:
        self.buf = buf
        self.live = live


class _Entry:
    """A cached plaintext segment: ``size`` bytes at ``at`` in its run's buffer; ``pins``
    readers are copying from it right now."""

    __slots__ = ("at", "evicted", "pins", "run", "size", "wiped")

    def __init__(self, run: _Run, at: int, size: int) -> None:
        self.run = run
        self.at = at
        self.size = size
        self.pins = 0
        self.evicted = False
        self.wiped = False

    def view(self) -> memoryview:
        return memoryview(self.run.buf)[self.at : self.at + self.size]


_Key = tuple[int, int]
_T = TypeVar("_T")


class SegmentStore:
    """Plaintext ranges of the mounted files, each byte authenticated before it is returned.

    ``cache_bytes`` bounds the decrypted segments kept; ``readahead_bytes`` bounds the
    plaintext ahead of a sequential reader (cached or in flight), fetched on ``workers``
    threads in runs of about ``run_bytes`` of ciphertext.
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
        #: run buffers with no plaintext left, reused by later fetches: in a sequential read
        #: each window refill evicts about one run, whose buffer the next refill takes
        self._spare: list[mmap.mmap] = []
        self._spare_limit = SPARE_RUNS * max(
            run_bytes, max((f.header.segment_size for f in files), default=0)
        )

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
                return use(entry.view())
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
            if entry.wiped:
                return False
            entry.pins += 1
            return True

    def _unpin(self, entry: _Entry) -> None:
        with self._lock:
            entry.pins -= 1
            done = entry.evicted and entry.pins == 0 and self._retire(entry)
        if done:
            self._wipe([entry])

    def _retire(self, entry: _Entry) -> bool:
        """Mark an entry no reader holds as gone (lock held): no reader can pin it from now
        on; the caller then wipes it with :meth:`_wipe`, outside the lock. False if it was
        already retired."""
        if entry.wiped:
            return False
        entry.wiped = True
        return True

    def _wipe(self, entries: list[_Entry]) -> None:
        """Wipe retired entries' plaintext (no lock held: readers and fetches go on
        meanwhile), then hand each run buffer with no plaintext left to a later fetch."""
        for entry in entries:
            wipe(entry.view())
        with self._lock:
            for entry in entries:
                self._release(entry.run)

    def _release(self, run: _Run, count: int = 1) -> None:
        """``count`` segments of ``run`` hold no plaintext any more (lock held); once none
        does, keep the buffer for a later fetch. Reusing them keeps run-sized allocations
        from fragmenting the heap of a long-running mount (its RSS then stays flat)."""
        run.live -= count
        if run.live == 0 and not self._closed and len(run.buf) <= self._spare_limit:
            # the newest buffers stay (the next fetches are most likely their size)
            self._spare.append(run.buf)
            while sum(map(len, self._spare)) > self._spare_limit:
                self._spare.pop(0)

    def _buffer(self, size: int) -> mmap.mmap:
        """A buffer for ``size`` bytes of ciphertext: a spare one of that size, else a new
        anonymous mapping. A mapping goes back to the kernel the moment it is dropped,
        where run-sized heap blocks freed by many threads would stay resident in their
        malloc arenas and let the process's RSS creep up."""
        with self._lock:
            for i, buf in enumerate(self._spare):
                if len(buf) == size:
                    return self._spare.pop(i)
        return mmap.mmap(-1, size)

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

    def _free(self, file: int, first: int, limit: int) -> int:
        """How many of up to ``limit`` segments from ``first`` are neither cached nor in
        flight, counted up to the first that is (lock held)."""
        n = 0
        while n < limit and (file, first + n) not in self._cache:
            if (file, first + n) in self._inflight:
                break
            n += 1
        return n

    def _fetch_run(self, file: int, run: range) -> None:
        """Fetch ``run`` with one request, authenticate each segment in place, cache the
        good ones (slices of the run's buffer) and settle every segment's future."""
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
            with self._lock:  # ciphertext only: no wipe needed
                self._release(_Run(sealed, 1))
            if not isinstance(exc, Exception):
                raise
            return
        self.stats.add(segments_fetched=len(run), sealed_bytes_fetched=len(sealed))
        owner = _Run(sealed, len(run))
        pos = 0
        for index in run:
            n = header.segment_sealed_len(index)
            segment = view[pos : pos + n]
            try:
                # in place: the plaintext overwrites its ciphertext (wiped on failure); the
                # tag after it stays and is never read
                mounted.decryptor.decrypt_segment_into(index, segment, segment[: n - TAG_LEN])
            except DecryptionError as exc:
                with self._lock:
                    self._release(owner)
                self._auth_failed(file, index, exc)
            except BaseException as exc:  # a closed decryptor: settle the rest and stop
                with self._lock:
                    self._release(owner, run[-1] - index + 1)
                self._settle(file, range(index, run[-1] + 1), exc)
                raise
            else:
                self._insert(file, index, _Entry(owner, pos, n - TAG_LEN))
            pos += n

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

    def _insert(self, file: int, index: int, entry: _Entry) -> None:
        """Cache a freshly authenticated segment, evicting (and wiping) the least recently
        used beyond the budget."""
        with self._lock:
            future = self._inflight.pop((file, index), None)
            if self._closed:
                gone = [entry] if self._retire(entry) else []
            else:
                self._cache[(file, index)] = entry
                self._cached += entry.size
                gone = self._evict()
        self._wipe(gone)
        if future is not None:
            if entry.wiped:
                future.set_exception(TransientError("the mount is closing"))
            else:
                future.set_result(entry)

    def _evict(self) -> list[_Entry]:
        """Drop least recently used segments beyond the budget (lock held); the newest one
        always stays. Returns the dropped entries no reader holds, for :meth:`_wipe`."""
        gone: list[_Entry] = []
        while self._cached > self.cache_bytes and len(self._cache) > 1:
            _key, entry = self._cache.popitem(last=False)
            self._cached -= entry.size
            entry.evicted = True
            if entry.pins == 0 and self._retire(entry):
                gone.append(entry)
        return gone

    # -- read-ahead --------------------------------------------------------------------------

    def read_ahead(self, file: int, offset: int) -> None:
        """A sequential reader is at ``offset``: keep the read-ahead window after it (cached
        or in flight) full, in whole runs on the pool (returns at once).

        A run is only started once a whole one fits in the window and the budget (or the
        file ends): as the reader advances one segment at a time, the window is then
        refilled by few requests of ``run_bytes`` rather than one small request per
        segment."""
        header = self.files[file].header
        if offset >= header.size or self.readahead_bytes <= 0:
            return
        window = max(1, self.readahead_bytes // header.segment_size)
        per_run = min(window, max(1, self.run_bytes // (header.segment_size + TAG_LEN)))
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
                free = self._free(file, index, min(per_run, last - index))
                budget = (self.readahead_bytes - self._ahead) // header.segment_size
                edge = index + free == last < header.segment_count
                if budget < free or (edge and free < per_run):
                    break  # wait for room, or for the window to hold a whole run
                run = self._claim(file, index, free)
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
            gone: list[_Entry] = []
            for entry in self._cache.values():
                entry.evicted = True
                if entry.pins == 0 and self._retire(entry):
                    gone.append(entry)
            self._cache.clear()
            self._cached = 0
            self._spare.clear()
            pending = list(self._inflight.values())
            self._inflight.clear()
        self._wipe(gone)  # an entry still pinned is wiped when its reader unpins it
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

    def counters(self) -> dict[str, int]:
        """The counters of :class:`Stats` and ``cached_bytes``: what the mount's stats
        attribute and its metrics report."""
        return {**self.stats.snapshot(), "cached_bytes": self.cached_bytes}


def _bytes_of(at: int, size: int, buf: memoryview) -> bytes:
    return bytes(buf[at : at + size])


def _copy_into(into: memoryview, at: int, buf: memoryview) -> None:
    into[:] = buf[at : at + len(into)]
