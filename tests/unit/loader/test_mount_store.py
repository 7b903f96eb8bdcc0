"""The mount's segment store and FUSE operations, without a kernel: real sealed files on disk,
real AES-GCM, and the store's bounds (cache, read-ahead, failures) checked directly."""

from __future__ import annotations

import errno
import mmap
import os
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from modelseal.crypto.secret import SecretBytes
from modelseal.errors import (
    BackendError,
    ConfigError,
    DecryptionError,
    FormatError,
    TransientError,
)
from modelseal.format.header import TAG_LEN
from modelseal.format.options import SealOptions
from modelseal.format.v1 import FileDecryptor, read_header, seal_fd
from modelseal.loader.mount import serve as serve_module
from modelseal.loader.mount.fs import STATS_XATTR, SealedFs
from modelseal.loader.mount.serve import MountOptions
from modelseal.loader.mount.store import SPARE_RUNS, LocalSource, MountedFile, SegmentStore
from modelseal.loader.mount.tree import Tree

SEG = 4096
PLAIN = os.urandom(40 * SEG + 777)


def seal(tmp: Path, data: bytes, dek: SecretBytes, name: str = "w.bin") -> Path:
    src, dst = tmp / name, tmp / f"{name}.sealed"
    src.write_bytes(data)
    fd_in = os.open(src, os.O_RDONLY)
    fd_out = os.open(dst, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        options = SealOptions(key_id="models/m/v1", segment_size=SEG)
        seal_fd(fd_in, fd_out, dek, options, size=len(data), path=name)
    finally:
        os.close(fd_in)
        os.close(fd_out)
    return dst


def open_store(paths: list[Path], dek: SecretBytes, **kwargs: int) -> SegmentStore:
    fds, files = [], []
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        header, commitment = read_header(fd)
        fds.append(fd)
        files.append(MountedFile(header.path, header, FileDecryptor(header, commitment, dek)))
    kwargs.setdefault("cache_bytes", 8 * SEG)
    kwargs.setdefault("run_bytes", 4 * (SEG + TAG_LEN))
    kwargs.setdefault("readahead_bytes", 8 * SEG)
    return SegmentStore(files, LocalSource(fds), **kwargs)


@pytest.fixture
def dek() -> SecretBytes:
    return SecretBytes(secrets.token_bytes(32))


@pytest.fixture
def store(tmp_path: Path, dek: SecretBytes) -> Iterator[SegmentStore]:
    s = open_store([seal(tmp_path, PLAIN, dek)], dek)
    yield s
    s.close()


def test_any_range_reads_back(store: SegmentStore) -> None:
    for offset, size in [(0, 1), (0, SEG), (SEG - 1, 2), (5 * SEG + 3, 7 * SEG), (0, len(PLAIN))]:
        assert store.read(0, offset, size) == PLAIN[offset : offset + size]
    # past the end: short, then empty
    assert store.read(0, len(PLAIN) - 10, 100) == PLAIN[-10:]
    assert store.read(0, len(PLAIN), 100) == b""


def test_cache_stays_within_its_budget_and_wipes_what_it_drops(store: SegmentStore) -> None:
    assert store.read(0, 0, len(PLAIN)) == PLAIN
    assert store.cached_bytes <= store.cache_bytes
    kept = list(store._cache.values())
    assert kept
    assert all(any(entry.view()) for entry in kept)
    store.close()
    assert all(entry.wiped and not any(entry.view()) for entry in kept)


def _plaintext_regions(buf: mmap.mmap) -> list[bytes]:
    """The plaintext parts of a run buffer (each segment's bytes before its tag)."""
    step = SEG + TAG_LEN
    return [
        bytes(buf[pos : pos + min(SEG, len(buf) - pos - TAG_LEN)])
        for pos in range(0, len(buf), step)
    ]


def _settle(store: SegmentStore, timeout: float = 10.0) -> None:
    """Wait until no read-ahead is in flight."""
    deadline = time.monotonic() + timeout
    while True:
        with store._lock:
            if store._ahead == 0 and not store._inflight:
                return
        assert time.monotonic() < deadline, "read-ahead did not settle"
        time.sleep(0.001)


@pytest.mark.parametrize("segments_per_run", [1, 4])
def test_evicted_buffers_are_wiped_and_reused(
    tmp_path: Path, dek: SecretBytes, segments_per_run: int
) -> None:
    store = open_store(
        [seal(tmp_path, PLAIN, dek)], dek, run_bytes=segments_per_run * (SEG + TAG_LEN)
    )
    try:
        kept: list[mmap.mmap] = []  # references, so that ids stay unique
        for offset in range(0, len(PLAIN), SEG):
            assert store.read(0, offset, SEG) == PLAIN[offset : offset + SEG]
            store.read_ahead(0, offset + SEG)
            # read-ahead lands before the next read, so that every fetch but the first is a
            # whole run and the count below does not depend on thread timing
            _settle(store)
            with store._lock:
                kept.extend(e.run.buf for e in store._cache.values())
                # a spare buffer holds no plaintext (its tags, public, may stay)
                for buf in store._spare:
                    assert not any(b"".join(_plaintext_regions(buf)))
        distinct = {id(buf) for buf in kept}
        # the buffers in use are bounded by the working set, not by the file (a fresh
        # mapping per fetch would need one each): the runs of the cache and the window, one
        # more that the cache's oldest segments straddle, the spares and the first read's own
        working_set = (store.cache_bytes + store.readahead_bytes) // (segments_per_run * SEG)
        assert len(distinct) <= working_set + 1 + SPARE_RUNS + 1
        assert len(distinct) < store.stats.segments_fetched // segments_per_run
    finally:
        store.close()
    assert store._spare == []


def test_read_ahead_refills_its_window_in_whole_runs(store: SegmentStore) -> None:
    """Runs of four segments (``run_bytes``) in a window of eight: as the reader advances
    one segment at a time, a run is started only once four segments of the window are
    free, so every request but the file's last is a whole run."""
    runs: list[int] = []
    fetch = store._fetch_run

    def counting(file: int, run: range) -> None:
        runs.append(len(run))
        fetch(file, run)

    store._fetch_run = counting  # type: ignore[method-assign]
    for offset in range(0, len(PLAIN), SEG):
        assert store.read(0, offset, SEG) == PLAIN[offset : offset + SEG]
        store.read_ahead(0, offset + SEG)
    store._pool.shutdown(wait=True)
    assert runs[0] == 1  # the first read's own segment, on demand
    assert all(n == 4 for n in runs[1:-1]), runs
    assert store.stats.segments_fetched == len(PLAIN) // SEG + 1  # each fetched once


def test_a_cached_segment_is_not_fetched_again(store: SegmentStore) -> None:
    store.read(0, 10, 100)
    fetched = store.stats.segments_fetched
    store.read(0, 200, 100)
    assert store.stats.segments_fetched == fetched
    assert store.stats.cache_hits >= 1


def test_read_ahead_fetches_the_next_segments_within_its_budget(store: SegmentStore) -> None:
    store.read_ahead(0, 0)
    store._pool.shutdown(wait=True)
    assert store.stats.readahead_runs >= 1
    assert store.stats.segments_fetched == 8  # readahead_bytes // SEG
    before = store.stats.segments_fetched
    assert store.read(0, 0, 8 * SEG) == PLAIN[: 8 * SEG]
    assert store.stats.segments_fetched == before


def test_concurrent_readers_of_one_segment_share_its_fetch(store: SegmentStore) -> None:
    barrier = threading.Barrier(8)
    results: list[bytes] = []

    def read() -> None:
        barrier.wait()
        results.append(store.read(0, 3 * SEG + 5, 50))

    threads = [threading.Thread(target=read) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [PLAIN[3 * SEG + 5 : 3 * SEG + 55]] * 8
    assert store.stats.segments_fetched == 1


def test_a_changed_segment_fails_alone_and_is_never_cached(
    tmp_path: Path, dek: SecretBytes
) -> None:
    sealed = seal(tmp_path, PLAIN, dek)
    fd = os.open(sealed, os.O_RDONLY)
    header, _ = read_header(fd)
    os.close(fd)
    raw = bytearray(sealed.read_bytes())
    raw[header.segment_offset(5) + 9] ^= 0x80
    sealed.write_bytes(bytes(raw))
    store = open_store([sealed], dek)
    try:
        with pytest.raises(DecryptionError):
            store.read(0, 5 * SEG, 10)
        with pytest.raises(DecryptionError):  # a range that only touches it
            store.read(0, 4 * SEG, SEG + 1)
        assert store.stats.auth_failures == 2
        assert (0, 5) not in store._cache
        # neighbours in the same run authenticated and serve
        assert store.read(0, 4 * SEG, SEG) == PLAIN[4 * SEG : 5 * SEG]
        assert store.read(0, 6 * SEG, SEG) == PLAIN[6 * SEG : 7 * SEG]
        # read-ahead over it caches the good segments only
        store.read_ahead(0, 0)
        store._pool.shutdown(wait=True)
        assert (0, 5) not in store._cache
        assert store.stats.auth_failures == 3
    finally:
        store.close()


class _FailingSource:
    def read(self, file: int, start: int, into: memoryview) -> None:
        raise TransientError("registry unreachable")

    def close(self) -> None:
        return None


def test_a_fetch_failure_is_counted_and_raised(tmp_path: Path, dek: SecretBytes) -> None:
    sealed = seal(tmp_path, PLAIN, dek)
    fd = os.open(sealed, os.O_RDONLY)
    header, commitment = read_header(fd)
    os.close(fd)
    store = SegmentStore(
        [MountedFile("w.bin", header, FileDecryptor(header, commitment, dek))],
        _FailingSource(),
        cache_bytes=8 * SEG,
    )
    try:
        with pytest.raises(TransientError):
            store.read(0, 0, 10)
        assert store.stats.fetch_failures == 1
        assert not store._inflight
    finally:
        store.close()


def test_tree_refuses_a_file_that_is_also_a_directory() -> None:
    with pytest.raises(FormatError):
        Tree([("a", 1), ("a/b", 1)])
    with pytest.raises(FormatError):
        Tree([("a/b", 1), ("a", 1)])
    tree = Tree([("x/y/z.bin", 3), ("x/w", 1)])
    assert tree.lookup("/x/y/z.bin") is not None
    assert tree.lookup("/x/y/z.bin/more") is None
    assert tree.lookup("/nope") is None
    assert tree.directories == 3


def fi(flags: int = os.O_RDONLY) -> SimpleNamespace:
    return SimpleNamespace(flags=flags, fh=0, keep_cache=0)


def test_fs_is_read_only_and_keeps_the_page_cache(store: SegmentStore) -> None:
    fs = SealedFs(store, Tree([("w.bin", len(PLAIN))]), model_digest="sha256:" + "a" * 64)
    assert fs.readdir("/", None) == [".", "..", "w.bin"]
    assert fs.getattr("/w.bin")["st_size"] == len(PLAIN)
    for flags in (os.O_WRONLY, os.O_RDWR):
        with pytest.raises(OSError) as refused:
            fs.open("/w.bin", fi(flags))
        assert refused.value.errno == errno.EROFS
    with pytest.raises(OSError) as missing:
        fs.getattr("/other")
    assert missing.value.errno == errno.ENOENT
    handle = fi()
    fs.open("/w.bin", handle)
    assert handle.keep_cache == 1
    assert fs.read("/w.bin", 100, 0, handle) == PLAIN[:100]
    assert fs.read("/w.bin", 100, 100, handle) == PLAIN[100:200]  # sequential: read-ahead
    assert store.stats.readahead_runs >= 1
    assert b'"reads": 2' in fs.getxattr("/", STATS_XATTR)
    fs.release("/w.bin", handle)
    with pytest.raises(OSError) as closed:
        fs.read("/w.bin", 1, 0, handle)
    assert closed.value.errno == errno.EBADF


class _FailingBinding:
    """A binding whose mount fails the way libfuse's ``fuse_main_real`` reports it."""

    def __init__(self, code: int) -> None:
        self.code = code

    def FUSE(self, *args: object, **kwargs: object) -> None:
        raise RuntimeError(self.code)


@pytest.mark.parametrize(
    ("code", "unmounted", "error"),
    [(4, False, ConfigError), (7, False, BackendError), (8, False, BackendError)],
)
def test_a_mount_that_never_served_is_a_config_error(
    store: SegmentStore, tmp_path: Path, code: int, unmounted: bool, error: type[Exception]
) -> None:
    fs = SealedFs(store, Tree([("w.bin", len(PLAIN))]), model_digest="sha256:" + "a" * 64)
    with pytest.raises(error):
        serve_module._run(
            _FailingBinding(code),
            fs,
            MountOptions(mountpoint=tmp_path),
            unmounted=lambda: unmounted,
        )


def test_a_failed_loop_after_our_own_unmount_is_the_session_ending(
    store: SegmentStore, tmp_path: Path
) -> None:
    """Once this process unmounted, the kernel may end the connection with ECONNABORTED
    (libfuse: loop failed, 8); that is the asked-for end, not a failure. Any other result,
    or 8 without our unmount, stays an error (above)."""
    fs = SealedFs(store, Tree([("w.bin", len(PLAIN))]), model_digest="sha256:" + "a" * 64)
    options = MountOptions(mountpoint=tmp_path)
    serve_module._run(_FailingBinding(8), fs, options, unmounted=lambda: True)
    with pytest.raises(BackendError):
        serve_module._run(_FailingBinding(7), fs, options, unmounted=lambda: True)


def test_an_unmount_that_cannot_start_is_a_failed_unmount(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If fusermount3 cannot even be started, the signal watcher must survive to take the
    next signal: the unmount reports failure instead of raising."""

    def no_processes(*_args: object, **_kwargs: object) -> None:
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(serve_module.subprocess, "run", no_processes)
    assert serve_module._unmount(tmp_path) is False
