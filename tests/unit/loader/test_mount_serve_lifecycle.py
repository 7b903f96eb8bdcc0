"""Around the mount's serving loop: the allocator thresholds it sets, and its metrics
endpoint, bound by :func:`start_metrics` before attesting with the stop signals blocked in
its threads; :func:`serve` shows the mount's series on it only while it serves, and takes
them away on every path out (a second mount in the process would otherwise collide with
the first's)."""

from __future__ import annotations

import os
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from modelseal._internal import metrics
from modelseal._internal.metrics import MetricsEndpoint, MetricsServer
from modelseal.crypto.secret import SecretBytes
from modelseal.errors import ConfigError
from modelseal.format.v1 import FileDecryptor, read_header
from modelseal.loader.mount import serve as serve_module
from modelseal.loader.mount.serve import MountOptions
from modelseal.loader.mount.store import LocalSource, MountedFile
from tests.unit.loader.test_mount_store import PLAIN, seal

pytestmark = pytest.mark.skipif(not metrics.AVAILABLE, reason="needs prometheus-client")


class _FailingBinding:
    def FUSE(self, *args: object, **kwargs: object) -> None:
        raise RuntimeError(4)  # mounting failed


def _opened(tmp_path: Path) -> SimpleNamespace:
    dek = SecretBytes(secrets.token_bytes(32))
    path = seal(tmp_path, PLAIN, dek)
    fd = os.open(path, os.O_RDONLY)
    header, commitment = read_header(fd)
    files = [MountedFile(header.path, header, FileDecryptor(header, commitment, dek))]
    manifest = SimpleNamespace(digest="sha256:" + "a" * 64, files=files, total_size=len(PLAIN))
    return SimpleNamespace(files=files, source=LocalSource([fd]), manifest=manifest)


def _scrape(server: MetricsServer) -> str:
    return httpx.get(f"http://127.0.0.1:{server.port}/metrics", timeout=10).text


def _serve_failing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exporter: MetricsServer, **patches: object
) -> None:
    monkeypatch.setattr(serve_module, "_load_binding", lambda: _FailingBinding())
    for name, value in patches.items():
        monkeypatch.setattr(serve_module, name, value)
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir(exist_ok=True)
    options = MountOptions(mountpoint=mountpoint)
    with pytest.raises((ConfigError, RuntimeError)):
        serve_module.serve(_opened(tmp_path), options, exporter=exporter)  # type: ignore[arg-type]


@pytest.fixture
def exporter() -> Iterator[MetricsServer]:
    server = serve_module.start_metrics(MetricsEndpoint(port=0))
    yield server
    server.close()


def _registrable() -> None:
    """The mount's series can be registered again: nothing of a failed mount is left."""
    MetricsServer(
        MetricsEndpoint(port=0),
        collectors=[metrics.SnapshotCollector(dict, metrics.MOUNT_COUNTERS)],
    ).close()


def test_a_mount_that_fails_takes_its_series_away(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exporter: MetricsServer
) -> None:
    _serve_failing(tmp_path, monkeypatch, exporter)
    text = _scrape(exporter)  # the caller's endpoint still serves, without the mount
    assert "process_" in text or "python_info" in text
    assert "modelseal_mount_" not in text
    _registrable()


def test_a_failure_before_the_loop_takes_the_series_away(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exporter: MetricsServer
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("cannot start new thread")

    _serve_failing(tmp_path, monkeypatch, exporter, SealedFs=broken)
    assert "modelseal_mount_" not in _scrape(exporter)
    _registrable()


def _blocked(native_id: int) -> set[int]:
    status = Path(f"/proc/self/task/{native_id}/status").read_text()
    (mask,) = [line.split()[1] for line in status.splitlines() if line.startswith("SigBlk:")]
    return {sig for sig in range(1, 65) if int(mask, 16) >> (sig - 1) & 1}


def test_the_metrics_thread_leaves_the_stop_signals_to_the_watcher(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A SIGTERM to the mount is taken by its watcher (which unmounts): a metrics thread
    with the signal unblocked would take it instead, and its default action ends the
    process with the mount still in place. The caller's own mask is left as it was."""
    assert not serve_module.STOP_SIGNALS & _blocked(threading.get_native_id())
    server = serve_module.start_metrics(MetricsEndpoint(port=0))
    try:
        assert not serve_module.STOP_SIGNALS & _blocked(threading.get_native_id())
        (thread,) = [t for t in threading.enumerate() if t.name == "metrics"]
        assert thread.native_id is not None
        assert _blocked(thread.native_id) >= serve_module.STOP_SIGNALS
    finally:
        server.close()


def test_the_series_are_served_while_the_mount_serves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exporter: MetricsServer
) -> None:
    seen: list[str] = []

    class _Probe(_FailingBinding):
        def FUSE(self, *args: object, **kwargs: object) -> None:
            seen.append(_scrape(exporter))
            super().FUSE(*args, **kwargs)

    monkeypatch.setattr(serve_module, "_load_binding", lambda: _Probe())
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    with pytest.raises(ConfigError):
        serve_module.serve(
            _opened(tmp_path),  # type: ignore[arg-type]
            MountOptions(mountpoint=mountpoint),
            exporter=exporter,
        )
    (during,) = seen
    assert "modelseal_mount_reads_total 0.0" in during
    assert "modelseal_mount_authentication_failures_total 0.0" in during
    assert "modelseal_mount_" not in _scrape(exporter)


def test_serving_keeps_freed_read_buffers_on_the_heap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """serve() sets the allocator thresholds above FUSE's largest read (1 MiB) before the
    first read (``tests/unit/_internal/test_heap.py`` shows what they change)."""
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(serve_module, "keep_freed_blocks", lambda *a: bool(calls.append(a)))
    monkeypatch.setattr(serve_module, "_load_binding", lambda: _FailingBinding())
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    with pytest.raises(ConfigError):
        serve_module.serve(_opened(tmp_path), MountOptions(mountpoint=mountpoint))  # type: ignore[arg-type]
    ((mmap_threshold, trim_threshold),) = calls
    assert mmap_threshold > 1 << 20
    assert trim_threshold >= 2 * mmap_threshold
