"""Serve an opened model on a FUSE mount point until SIGTERM, SIGINT or an unmount.

The process stays in the foreground (a container's main process or a Kubernetes sidecar).
SIGTERM, SIGINT and SIGHUP are blocked in every thread and taken by one watcher thread with
``sigtimedwait``: on a signal it lazily unmounts the mount point (``fusermount3 -u -z``), the
kernel then ends the FUSE session, the serving loop returns, and the process wipes its cache
and keys, removes its readiness marker and exits 0. (libfuse's own signal handlers would end
the loop without waking it reliably from Python, and would report the signal as an error.)

Readiness: once the kernel has initialised the connection and a ``stat`` of the mount point
answers from the mount, a JSON marker (model, digest, files, pid) is written atomically to
``ready_file``, for a Kubernetes ``startupProbe``/``readinessProbe`` (``test -f``). It is
removed before the process exits.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelseal._internal import environment
from modelseal._internal.heap import keep_freed_blocks
from modelseal._internal.metrics import (
    MOUNT_COUNTERS,
    MOUNT_GAUGES,
    MetricsEndpoint,
    MetricsServer,
    SnapshotCollector,
)
from modelseal._internal.procfs import MOUNTINFO_LIMIT, parse_mount_entries, read_bounded
from modelseal.errors import BackendError, ConfigError
from modelseal.loader.mount.fs import SealedFs
from modelseal.loader.mount.opening import OpenedModel
from modelseal.loader.mount.store import (
    DEFAULT_CACHE_BYTES,
    DEFAULT_READAHEAD_BYTES,
    DEFAULT_RUN_BYTES,
    SegmentStore,
)
from modelseal.loader.mount.tree import Tree

log = logging.getLogger(__name__)

__all__ = [
    "STOP_SIGNALS",
    "MountOptions",
    "check_mountpoint",
    "preload_binding",
    "serve",
    "start_metrics",
]

#: the signals that unmount; a caller that blocks them too before :func:`serve` keeps a
#: second one (arriving after the unmount, during the last clean-up) from killing it
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
#: the segment cache must hold a few segments per reader, or concurrent readers would evict
#: each other's segments before copying them
_MIN_CACHE = 16 << 20
#: every read allocates blocks up to FUSE's largest request (1 MiB): keep blocks below this
#: on the heap, and give a heap's free top back only beyond the trim threshold
_MMAP_THRESHOLD = 4 << 20
_TRIM_THRESHOLD = 16 << 20


@dataclass(frozen=True)
class MountOptions:
    """Where and how to serve (the model and its key come from :class:`OpenedModel`)."""

    mountpoint: Path
    ready_file: Path | None = None
    cache_bytes: int = DEFAULT_CACHE_BYTES
    readahead_bytes: int = DEFAULT_READAHEAD_BYTES
    workers: int = 4
    #: let other users (the inference container's) read the mount; needs root or
    #: ``user_allow_other`` in /etc/fuse.conf
    allow_other: bool = False
    #: kernel read-ahead of the mount in KiB (sysfs, best effort); 0 keeps the kernel's
    kernel_readahead_kib: int = 1024

    def __post_init__(self) -> None:
        if self.cache_bytes < _MIN_CACHE:
            raise ConfigError(f"the segment cache must be at least {_MIN_CACHE >> 20} MiB")
        if self.readahead_bytes < 0:
            raise ConfigError("read-ahead must not be negative")


def check_mountpoint(path: Path) -> None:
    """An empty directory that is not already a mount point (checked before attesting).

    A modelseal mount left behind by a killed process (``kill -9``, the OOM killer: no
    unmount ran) answers every call with ENOTCONN until it is unmounted; a restarted
    sidecar would find it in its way forever. Such a mount, and only one of ours
    (filesystem type ``fuse.modelseal``), is lazily unmounted here first. Any other dead
    FUSE mount is the operator's to remove."""
    if _dead_fuse(path):
        if _fs_type_at(path) != _FS_TYPE:
            raise ConfigError(
                f"{path} is a FUSE mount whose process is gone (not a modelseal mount): "
                f"unmount it first (fusermount3 -u {path})"
            )
        log.warning("%s: a modelseal mount whose process is gone (killed?): unmounting it", path)
        if not _unmount(path) or _dead_fuse(path):
            raise ConfigError(f"{path}: cannot unmount the dead modelseal mount there")
    if not path.is_dir():
        raise ConfigError(f"mount point {path} is not a directory")
    if os.path.ismount(path):
        raise ConfigError(f"{path} is already a mount point")
    if any(path.iterdir()):
        raise ConfigError(f"mount point {path} is not empty")


#: the filesystem type of a modelseal mount in /proc/self/mountinfo (``fuse.`` + subtype)
_FS_TYPE = "fuse.modelseal"


def _dead_fuse(path: Path) -> bool:
    """A FUSE mount whose process is gone: the kernel answers ENOTCONN. ``statvfs``, not
    ``stat``: the kernel answers a ``stat`` from its attribute cache without asking the
    (dead) process, and a mount caches them for long."""
    try:
        os.statvfs(path)
    except OSError as exc:
        return exc.errno == errno.ENOTCONN
    return False


def _fs_type_at(path: Path) -> str | None:
    """The type of the filesystem mounted last at ``path`` (the one a lookup reaches)."""
    where = os.path.join(os.path.realpath(path.parent), path.name)
    mountinfo = read_bounded(Path("/proc/self/mountinfo"), MOUNTINFO_LIMIT)
    found = [m.fs_type for m in parse_mount_entries(mountinfo or "") if m.mount_point == where]
    return found[-1] if found else None


#: libfuse 3 by its soname: the binding would otherwise prefer libfuse 2 where both are
#: installed, and find them with ``ctypes.util.find_library`` (an ``ldconfig -p`` child)
_LIBFUSE3 = "libfuse3.so.3"


def _prefer_libfuse3() -> None:
    if environment.variable("FUSE_LIBRARY_PATH") is None:
        environment.export("FUSE_LIBRARY_PATH", _LIBFUSE3)


def preload_binding() -> None:
    """Import the libfuse binding on a short-lived thread (~0.2 s of ctypes set-up), so it
    overlaps the network round trips of attestation and the manifest; errors surface later,
    from :func:`serve`."""
    _prefer_libfuse3()

    def load() -> None:
        with contextlib.suppress(Exception):
            import mfusepy  # noqa: F401

    threading.Thread(target=load, name="ms-fuse-import", daemon=True).start()


def _load_binding() -> Any:
    """The libfuse binding; a missing libfuse3 or /dev/fuse is a configuration error."""
    _prefer_libfuse3()
    if not os.path.exists("/dev/fuse"):
        raise ConfigError(
            "no /dev/fuse: the container needs the FUSE device (see docs/guides/mount.md)"
        )
    try:
        import mfusepy
    except (ImportError, OSError) as exc:
        raise ConfigError(
            f"FUSE is not available ({exc}): install libfuse3 (Debian: fuse3) and the "
            "'mount' extra (pip install 'modelseal[mount]')"
        ) from None
    return mfusepy


def _mounted_at(dev: int) -> Path | None:
    """Where the mount of device ``dev`` is now (``/proc/self/mountinfo``): the directory it
    was made on may have been renamed or moved since."""
    wanted = f"{os.major(dev)}:{os.minor(dev)}"
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 4 and fields[2] == wanted:
                    # octal escapes of space, tab, newline and backslash
                    return Path(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), fields[4]))
    except OSError:
        return None
    return None


def _unmount(mountpoint: Path, dev: int | None = None) -> bool:
    """Lazy unmount (open files stay readable until closed); True if it worked. With the
    mount's device number, the mount is found wherever its directory now is."""
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    if tool is None:
        log.error("cannot unmount %s: fusermount3 not found", mountpoint)
        return False
    where = (_mounted_at(dev) if dev is not None else None) or mountpoint
    try:
        done = subprocess.run(
            [tool, "-u", "-z", str(where)], capture_output=True, text=True, check=False
        )
    except OSError as exc:  # cannot start it (no memory, no processes left): try again later
        log.error("unmount of %s failed: %s", where, exc)
        return False
    if done.returncode != 0:
        log.error("unmount of %s failed: %s", where, done.stderr.strip())
    return done.returncode == 0


class _Lifecycle:
    """The readiness marker and the signal watcher around one serving loop."""

    def __init__(
        self, opened: OpenedModel, options: MountOptions, exporter: MetricsServer | None = None
    ) -> None:
        self.opened = opened
        self.options = options
        self.exporter = exporter
        self.stopping = threading.Event()
        self.ready = threading.Event()
        #: the mount's device number, known once it is live
        self.dev: int | None = None
        self._done = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="ms-signals", daemon=True)
        self._readying: threading.Thread | None = None
        self._unmounted = False

    @property
    def unmounted(self) -> bool:
        """True once this process lazily unmounted its own mount point."""
        return self._unmounted

    def start(self) -> None:
        self._watcher.start()

    def stop(self) -> None:
        self._done.set()
        self._watcher.join()
        if self._readying is not None:  # a marker written after this would outlive us
            self._readying.join(timeout=10)
        if self.options.ready_file is not None:
            with contextlib.suppress(FileNotFoundError):
                self.options.ready_file.unlink()

    def _watch(self) -> None:
        while not self._done.is_set():
            got = signal.sigtimedwait(STOP_SIGNALS, 0.2)
            if got is None:
                continue
            log.warning("%s received: unmounting %s", signal.Signals(got.si_signo).name,
                        self.options.mountpoint)  # fmt: skip
            self.stopping.set()
            if self.ready.is_set() and not self._unmounted:
                # a failed unmount leaves this thread waiting: the next signal tries again
                self._unmounted = _unmount(self.options.mountpoint, self.dev)
            # not mounted yet: the readiness thread unmounts as soon as the mount is live

    def on_init(self) -> None:
        """The kernel initialised the connection; confirm from outside, then go ready."""
        self._readying = threading.Thread(target=self._become_ready, name="ms-ready", daemon=True)
        self._readying.start()

    def _become_ready(self) -> None:
        mountpoint = self.options.mountpoint
        try:
            # answered by the mount once the init reply is through
            inside = os.stat(mountpoint)
            outside = os.stat(mountpoint.parent)
        except OSError as exc:
            log.error("the mount at %s does not answer: %s", mountpoint, exc)
            return
        if inside.st_dev == outside.st_dev:
            log.error("%s is not a mount after FUSE init", mountpoint)
            return
        _tune_readahead(inside.st_dev, self.options.kernel_readahead_kib)
        self.dev = inside.st_dev
        self.ready.set()
        if self.stopping.is_set():
            self._unmounted = _unmount(mountpoint, self.dev)
            return
        if self.options.ready_file is not None:
            self._write_marker(self.options.ready_file)
        log.info("serving %s at %s", self.opened.manifest.digest, mountpoint)

    def _write_marker(self, path: Path) -> None:
        manifest = self.opened.manifest
        marker = {
            "model": self.opened.model_id,
            "version": self.opened.version,
            "model_digest": manifest.digest,
            "files": len(manifest.files),
            "bytes": manifest.total_size,
            "mountpoint": str(self.options.mountpoint),
            "tee": self.opened.key.tee,
            "pid": os.getpid(),
            "timings": self.opened.timings.steps,
        }
        if self.exporter is not None:  # its port may have been chosen by the kernel
            marker["metrics_url"] = self.exporter.url
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(marker) + "\n", encoding="utf-8")
        os.replace(tmp, path)


def _tune_readahead(dev: int, kib: int) -> None:
    """Raise the kernel's read-ahead of this mount (its bdi) so a sequential reader asks in
    larger requests; best effort: sysfs is often read-only in containers."""
    if kib <= 0:
        return
    knob = Path(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb")
    try:
        knob.write_text(str(kib))
    except OSError as exc:
        log.debug("kernel read-ahead unchanged (%s: %s)", knob, exc.strerror)


def serve(
    opened: OpenedModel, options: MountOptions, *, exporter: MetricsServer | None = None
) -> dict[str, int]:
    """Mount, serve until unmounted or signalled, then wipe everything; returns the final
    counters. The caller's :class:`OpenedModel` is consumed (its source and decryptors are
    closed here). The process's allocator keeps freed megabyte-sized blocks for reuse from
    here on (:mod:`modelseal._internal.heap`): each read would otherwise fault in fresh
    pages for its buffers. With ``exporter`` (:func:`start_metrics`, the caller's to
    close) the mount's counters are served there while it is mounted."""
    keep_freed_blocks(_MMAP_THRESHOLD, _TRIM_THRESHOLD)
    store = SegmentStore(
        opened.files,
        opened.source,
        cache_bytes=options.cache_bytes,
        readahead_bytes=options.readahead_bytes,
        # a small cache takes smaller runs: a run's segments all land in the cache at once
        run_bytes=min(DEFAULT_RUN_BYTES, options.cache_bytes // 2),
        workers=options.workers,
    )
    try:
        check_mountpoint(options.mountpoint)
        binding = _load_binding()
        tree = Tree([(f.path, f.header.size) for f in opened.files])
        with contextlib.ExitStack() as undo:  # every step undone on every way out
            # every thread started from here on (libfuse's, the read-ahead pool, ours)
            # inherits the blocked signals; only the watcher takes them
            previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
            undo.callback(signal.pthread_sigmask, signal.SIG_SETMASK, previous)
            if exporter is not None:
                collector = SnapshotCollector(store.counters, MOUNT_COUNTERS, MOUNT_GAUGES)
                undo.enter_context(exporter.collecting(collector))
            life = _Lifecycle(opened, options, exporter)
            fs = SealedFs(store, tree, model_digest=opened.manifest.digest, on_init=life.on_init)
            life.start()
            undo.callback(life.stop)
            _run(binding, fs, options, unmounted=lambda: life.unmounted)
        return store.stats.snapshot()
    finally:
        store.close()


def start_metrics(endpoint: MetricsEndpoint) -> MetricsServer:
    """The mount's metrics endpoint, bound now: a caller starts it before attesting, so a
    port in use fails before a key is released or a measurement recorded. Its threads
    (the server's, and each scrape's, which inherit from it) start with the stop signals
    blocked, as :func:`serve` needs: a thread that could take SIGTERM would end the
    process by the signal's default action, with the mount left in place."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        return MetricsServer(endpoint)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _run(
    binding: Any, fs: SealedFs, options: MountOptions, *, unmounted: Callable[[], bool]
) -> None:
    """Run libfuse's loop; ``unmounted`` tells whether this process already unmounted."""
    extra: dict[str, Any] = {"allow_other": True} if options.allow_other else {}
    try:
        binding.FUSE(
            fs,
            str(options.mountpoint),
            foreground=True,
            raw_fi=True,
            ro=True,
            default_permissions=True,
            fsname="modelseal",
            subtype="modelseal",
            # libfuse 3.14's default idle-thread count is "unset" (-1), which it reports on
            # stderr as an invalid thread count; name both bounds
            max_threads=16,
            max_idle_threads=8,
            **extra,
        )
    except RuntimeError as exc:
        code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else 0
        if code in _SETUP_FAILURES:
            raise ConfigError(
                f"cannot mount {options.mountpoint}: {_SETUP_FAILURES[code]} (libfuse's "
                "message is above; mounting needs /dev/fuse and CAP_SYS_ADMIN or fusermount3)"
            ) from None
        if code == _LOOP_FAILED and unmounted():
            # after our own lazy unmount the kernel ends the connection once the last open
            # file closes; a worker thread may then read ECONNABORTED instead of ENODEV, which
            # libfuse reports as a failed loop although the session ended as asked
            log.info("the FUSE session at %s ended after the unmount (%s)", options.mountpoint, exc)
            return
        raise BackendError(f"the FUSE session at {options.mountpoint} failed ({exc})") from None


#: ``fuse_main_real``'s result when the serving loop returned an error (libfuse 3 helper.c)
_LOOP_FAILED = 8
#: ``fuse_main_real`` results that mean the mount never served (libfuse 3 fuse.h)
_SETUP_FAILURES = {
    1: "invalid FUSE options",
    2: "no mount point",
    3: "FUSE set-up failed",
    4: "mounting failed",
    5: "daemonizing failed",
    6: "signal set-up failed",
}
