"""Server subprocesses that can be ``kill -9``-ed the way a crash or an OOM kill does it.

Each server runs in its own session (process group), so :meth:`ServerProcess.kill9` takes
down a uvicorn supervisor *and* its worker processes at once, like a container runtime or
the kernel's OOM killer ending the whole service: killing only the supervisor would leave
orphaned workers serving on the socket, which is not a crash. Every start gets a fresh
loopback port (no waiting for the old socket's connections to drain) and appends the
server's output to one log file per server, whose tail goes into failure messages.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import free_port

__all__ = [
    "CLI",
    "DurabilityFailure",
    "Load",
    "ServerDidNotStart",
    "ServerProcess",
    "Stopwatch",
    "clean_env",
    "wait_for_progress",
    "wait_healthy",
]

CLI = [sys.executable, "-c", "from modelseal.cli import main; main()"]
START_TIMEOUT = 60.0
HTTP_TIMEOUT = 30.0
#: Pause of a traffic thread after a failed request (the server is likely down).
BACKOFF = 0.05


class DurabilityFailure(AssertionError):
    """A durability property failed; the message names the seed, the kill point and why."""


class Stopwatch:
    """Adds the wall time between :meth:`lap` calls to ``into[name]`` (for run reports)."""

    def __init__(self, into: dict[str, float]) -> None:
        self.into = into
        self.last = time.monotonic()

    def lap(self, name: str) -> None:
        now = time.monotonic()
        self.into[name] = self.into.get(name, 0.0) + now - self.last
        self.last = now


def wait_for_progress(count: Callable[[], int], at_least: int, timeout: float = 20.0) -> None:
    """Wait until ``count()`` grew by ``at_least`` (or ``timeout`` passed).

    A kill window starts its random delay only once the traffic is flowing: on a slow or
    busy machine the first requests after a restart can take seconds, and a kill before
    any of them were answered would test nothing.
    """
    start = count()
    deadline = time.monotonic() + timeout
    while count() - start < at_least and time.monotonic() < deadline:
        time.sleep(0.02)


class ServerDidNotStart(RuntimeError):
    """The server exited or never answered /healthz; the message ends with its log tail."""


def clean_env() -> dict[str, str]:
    """This process's environment without ``MODELSEAL_*`` settings (flags decide)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("MODELSEAL_")}


def wait_healthy(
    url: str,
    proc: subprocess.Popen[bytes],
    describe: Callable[[], str],
    *,
    timeout: float = START_TIMEOUT,
) -> None:
    """Poll ``url``/healthz until 200; ServerDidNotStart (with ``describe()``) if the
    process exits first or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise ServerDidNotStart(f"exited with {proc.returncode}: {describe()}")
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise ServerDidNotStart(f"no /healthz within {timeout:.0f} s: {describe()}")
        time.sleep(0.05)


class ServerProcess:
    """One server (``argv(port)``) that can be started, killed with SIGKILL and restarted."""

    def __init__(
        self,
        name: str,
        argv: Callable[[int], list[str]],
        log: Path,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self._argv = argv
        self.log = log
        self._env = dict(env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.starts = 0

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> str:
        """Start on a fresh port and wait for /healthz; returns the base URL."""
        port = free_port()
        self.starts += 1
        with self.log.open("ab") as out:
            out.write(f"\n===== start {self.starts} on port {port} =====\n".encode())
            out.flush()
            self.proc = subprocess.Popen(
                self._argv(port),
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**clean_env(), **self._env},
                start_new_session=True,
            )
        self.url = f"http://127.0.0.1:{port}"
        try:
            wait_healthy(self.url, self.proc, self.log_tail)
        except ServerDidNotStart as exc:
            self.kill9()
            raise ServerDidNotStart(f"{self.name}: {exc}") from None
        return self.url

    def kill9(self) -> None:
        """SIGKILL the whole process group (supervisor and workers) and reap it."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        _wait_group_gone(self.proc.pid)

    def stop(self) -> None:
        """Graceful stop (SIGTERM to the group), SIGKILL after 10 s."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        self.kill9()

    def log_tail(self, limit: int = 3000) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return text[-limit:]


def _wait_group_gone(pgid: int, timeout: float = 10.0) -> None:
    """Wait until no live process of group ``pgid`` is left (workers die with the
    supervisor; their zombies may linger until an init reaps them, so those do not count)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _live_members(pgid):
        time.sleep(0.02)


def _live_members(pgid: int) -> bool:
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # after the command name: state, ppid, pgrp, ...
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
            return True
    return False


class Load:
    """Traffic threads that run until :meth:`stop`; ``outcome(what, result)`` counts every
    request's status code or transport error. A thread that dies of an exception is a
    driver bug, kept in :attr:`crashes` so it cannot pass as a quiet loss of traffic."""

    def __init__(self, outcome: Callable[[str, str], None]) -> None:
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []
        self.crashes: list[str] = []
        self._outcome = outcome

    def spawn(self, job: Callable[[random.Random], None], rng: random.Random) -> None:
        self.threads.append(threading.Thread(target=self._guard, args=(job, rng), daemon=True))

    def start(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        for t in self.threads:
            t.join(HTTP_TIMEOUT + 10)

    def _guard(self, job: Callable[[random.Random], None], rng: random.Random) -> None:
        try:
            job(rng)
        except BaseException as exc:
            self.crashes.append(f"traffic thread crashed: {type(exc).__name__}: {exc}")

    def call(
        self, http: httpx.Client, what: str, method: str, url: str, **kwargs: Any
    ) -> httpx.Response | None:
        """One request; None (after a short pause) when it failed in transport."""
        try:
            response = http.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            self._outcome(what, type(exc).__name__)
            self.stopping.wait(BACKOFF)  # the server is down: do not spin until it is back
            return None
        self._outcome(what, str(response.status_code))
        return response
