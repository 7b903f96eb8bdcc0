"""`kbs serve --workers N`: one listening socket per worker (SO_REUSEPORT), restarts.

Connections must reach every worker (on one shared socket a single worker used to accept
a whole burst and keep it), and a worker that dies is replaced while the others serve.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.kbs_process import start_kbs

pytestmark = pytest.mark.e2e


def _children(pid: int) -> list[int]:
    """Worker processes of the supervisor (multiprocessing's resource tracker excluded)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmdline = fh.read()
        except OSError:
            continue
        if ppid == pid and b"resource_tracker" not in cmdline:
            found.append(int(entry))
    return sorted(found)


def _sockets(pid: int) -> int:
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"):
                count += 1
        except OSError:
            continue
    return count


def _wait_for(predicate: object, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url + "/healthz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def test_connections_reach_every_worker(tmp_path: Path) -> None:
    url, proc = start_kbs(tmp_path / "kbs", "--workers", "2")
    try:
        _wait_for(lambda: len(_children(proc.pid)) == 2, "two workers")
        workers = _children(proc.pid)
        _wait_for(lambda: all(_sockets(w) >= 1 for w in workers), "workers listening")
        before = {w: _sockets(w) for w in workers}
        port = int(url.rsplit(":", 1)[1])
        held = []
        for _ in range(40):
            conn = socket.create_connection(("127.0.0.1", port), timeout=10)
            conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: kbs\r\n\r\n")
            assert conn.recv(4096).startswith(b"HTTP/1.1 200")
            held.append(conn)
        gained = {w: _sockets(w) - before[w] for w in workers}
        for conn in held:
            conn.close()
        assert sum(gained.values()) >= 40  # (a worker may open a socket of its own too)
        # 40 connections hashed over two sockets: fewer than 5 on one is a ~1e-7 event
        assert min(gained.values()) >= 5, gained
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


def test_a_killed_worker_is_replaced(tmp_path: Path) -> None:
    url, proc = start_kbs(tmp_path / "kbs", "--workers", "2")
    try:
        _wait_for(lambda: len(_children(proc.pid)) == 2, "two workers")
        # /healthz answered from one worker; the other may still be importing. Kill only
        # when both listen, so the survivor can take the next connection.
        _wait_for(lambda: all(_sockets(w) >= 1 for w in _children(proc.pid)), "listening")
        victim = _children(proc.pid)[0]
        os.kill(victim, signal.SIGKILL)
        # once the victim's socket is gone, new connections go to the survivor (a connection
        # made while it was dying could still land in its backlog and be reset)
        _wait_for(lambda: _zombie(victim) or victim not in _children(proc.pid), "the kill")
        assert _healthy(url)  # the other worker keeps serving
        _wait_for(
            lambda: len(_children(proc.pid)) == 2 and victim not in _children(proc.pid),
            "a replacement worker",
        )
        _wait_for(lambda: all(_sockets(w) >= 1 for w in _children(proc.pid)), "listening")
        for _ in range(10):
            assert _healthy(url)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    assert _children(proc.pid) == []


def test_workers_die_with_a_killed_supervisor(tmp_path: Path) -> None:
    """kill -9 of the supervisor takes its workers along (no orphan keeps the port)."""
    url, proc = start_kbs(tmp_path / "kbs", "--workers", "2")
    _wait_for(lambda: len(_children(proc.pid)) == 2, "two workers")
    workers = _children(proc.pid)
    proc.kill()
    proc.wait(30)

    def gone() -> bool:
        return all(not os.path.exists(f"/proc/{w}") or _zombie(w) for w in workers)

    _wait_for(gone, "the workers to exit")
    assert not _healthy(url)


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
