"""serve() closes its metrics endpoint on every path out: a mount that fails leaves no
collector in the process's registry (a second mount in the process would collide) and no
listening socket."""

from __future__ import annotations

import os
import secrets
import socket
import threading
from pathlib import Path
from types import SimpleNamespace

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


def _port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _serve_failing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, port: int, **patches: object
) -> None:
    monkeypatch.setattr(serve_module, "_load_binding", lambda: _FailingBinding())
    for name, value in patches.items():
        monkeypatch.setattr(serve_module, name, value)
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir(exist_ok=True)
    options = MountOptions(mountpoint=mountpoint, metrics=MetricsEndpoint(port=port))
    with pytest.raises((ConfigError, RuntimeError)):
        serve_module.serve(_opened(tmp_path), options)  # type: ignore[arg-type]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_mount_that_fails_closes_its_metrics_endpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = _free_port()
    _serve_failing(tmp_path, monkeypatch, port)
    assert _port_is_free(port)
    MetricsServer(
        MetricsEndpoint(port=0),
        collectors=[metrics.SnapshotCollector(dict, metrics.MOUNT_COUNTERS)],
    ).close()


def test_a_failure_before_the_loop_closes_the_metrics_endpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("cannot start new thread")

    port = _free_port()
    _serve_failing(tmp_path, monkeypatch, port, SealedFs=broken)
    assert _port_is_free(port)
    MetricsServer(
        MetricsEndpoint(port=0),
        collectors=[metrics.SnapshotCollector(dict, metrics.MOUNT_COUNTERS)],
    ).close()


def _blocked(native_id: int) -> set[int]:
    status = Path(f"/proc/self/task/{native_id}/status").read_text()
    (mask,) = [line.split()[1] for line in status.splitlines() if line.startswith("SigBlk:")]
    return {sig for sig in range(1, 65) if int(mask, 16) >> (sig - 1) & 1}


def test_the_metrics_thread_leaves_the_stop_signals_to_the_watcher(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A SIGTERM to the mount is taken by its watcher (which unmounts): a metrics thread
    with the signal unblocked would take it instead, and its default action ends the
    process with the mount still in place."""
    seen: list[set[int]] = []

    class _Probe(_FailingBinding):
        def FUSE(self, *args: object, **kwargs: object) -> None:
            (server,) = [t for t in threading.enumerate() if t.name == "metrics"]
            assert server.native_id is not None
            seen.append(_blocked(server.native_id))
            super().FUSE(*args, **kwargs)

    assert not serve_module.STOP_SIGNALS & _blocked(threading.get_native_id())
    monkeypatch.setattr(serve_module, "_load_binding", lambda: _Probe())
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    options = MountOptions(mountpoint=mountpoint, metrics=MetricsEndpoint(port=0))
    with pytest.raises(ConfigError):
        serve_module.serve(_opened(tmp_path), options)  # type: ignore[arg-type]
    (blocked,) = seen
    assert blocked >= serve_module.STOP_SIGNALS
