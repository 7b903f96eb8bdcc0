"""Real loopback servers as child processes: start, wait until healthy, always stop.

The quickstart (and the end-to-end tests) run ``modelseal kbs serve`` and ``modelseal
registry serve`` exactly as an operator would, each in its own process group so that a
Ctrl-C or a failure never leaves a server behind.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from modelseal._internal import environment
from modelseal.errors import BackendError
from modelseal.tee import registry as tee_registry

#: the CLI of this very installation (works in a venv without PATH)
MODELSEAL = [sys.executable, "-c", "from modelseal.cli import main; main()"]


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for children: no inherited ``MODELSEAL_*`` surprises, no proxies."""
    env = environment.child_environment(
        drop_prefixes=("MODELSEAL_",), drop=("http_proxy", "https_proxy")
    )
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


@dataclass
class Service:
    """One server child process listening on ``url``."""

    name: str
    argv: Sequence[str]
    url: str
    log_path: Path
    env: Mapping[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    def start(self, *, timeout: float = 30.0) -> Service:
        """Start the process and wait until ``GET /healthz`` answers 200."""
        self.spawn()
        self.wait_healthy(timeout)
        return self

    def spawn(self) -> Service:
        """Start the process without waiting (see :meth:`wait_healthy`)."""
        log = self.log_path.open("ab")
        try:
            self.process = subprocess.Popen(
                list(self.argv),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=child_env(self.env),
                start_new_session=True,
            )
        finally:
            log.close()
        return self

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2.0, trust_env=False) as client:
            while True:
                if self.process is not None and self.process.poll() is not None:
                    raise BackendError(
                        f"{self.name} exited with status {self.process.returncode}: "
                        f"{self.log_tail()}"
                    )
                try:
                    if client.get(self.url + "/healthz").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise BackendError(f"{self.name} did not become healthy in {timeout}s")
                time.sleep(0.1)

    def wait_listening(self, timeout: float) -> None:
        """Wait until the URL's port accepts TCP connections (a TLS server whose
        certificate a plain HTTP health check could not judge)."""
        parts = urllib.parse.urlsplit(self.url)
        deadline = time.monotonic() + timeout
        while True:
            if self.process is not None and self.process.poll() is not None:
                raise BackendError(
                    f"{self.name} exited with status {self.process.returncode}: {self.log_tail()}"
                )
            try:
                socket.create_connection((parts.hostname, parts.port), 0.5).close()
                return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise BackendError(f"{self.name} did not start listening in {timeout}s")
            time.sleep(0.1)

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, *, timeout: float = 10.0) -> None:
        """SIGTERM the process group, SIGKILL it if it lingers."""
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                return
            proc.wait(timeout)

    def kill(self) -> None:
        """SIGKILL at once (a crash, as the resume tests need)."""
        proc = self.process
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                return
            proc.wait(10)


def kbs_service(
    data_dir: Path,
    log_dir: Path,
    *,
    port: int | None = None,
    tee_options: Mapping[str, Any] | None = None,
) -> Service:
    """``modelseal kbs serve`` on 127.0.0.1 with the TEE kinds' ``tee_options`` (option
    name -> value; default: the development kind opted in, for development only)."""
    port = port or free_port()
    argv = [*MODELSEAL, "kbs", "serve", "--data-dir", str(data_dir), "--host", "127.0.0.1"]
    argv += ["--port", str(port), "--log-level", "warning"]
    if tee_options is None:
        dev = tee_registry.plugin(tee_registry.DEVELOPMENT_KIND).config.options()
        tee_options = {spec.name: True for spec in dev if spec.enables}
    argv += option_flags(tee_options)
    return Service("kbs", argv, f"http://127.0.0.1:{port}", log_dir / "kbs.log")


def option_flags(values: Mapping[str, Any]) -> list[str]:
    """TEE option values (by option name) as command-line flags: ``--insecure-allow-sample``
    for an on/off option that is on, ``--mock-tdx-root PATH`` for a value."""
    specs = {
        spec.name: spec for spec in (*tee_registry.options(), *tee_registry.attester_options())
    }
    argv: list[str] = []
    for name, value in values.items():
        if value is True:
            argv.append(specs[name].flag)
        elif value not in (None, False):
            argv += [specs[name].flag, str(value)]
    return argv


def registry_service(data_dir: Path, log_dir: Path, *, port: int | None = None) -> Service:
    """``modelseal registry serve`` on 127.0.0.1 with local blobs."""
    port = port or free_port()
    argv = [*MODELSEAL, "registry", "serve", "--data-dir", str(data_dir)]
    argv += ["--host", "127.0.0.1", "--port", str(port)]
    return Service("registry", argv, f"http://127.0.0.1:{port}", log_dir / "registry.log")


def run_cli(
    args: Sequence[str], *, env: Mapping[str, str] | None = None, timeout: float = 300.0
) -> subprocess.CompletedProcess[str]:
    """Run ``modelseal ARGS`` to completion, capturing its output."""
    return subprocess.run(
        [*MODELSEAL, *args],
        capture_output=True,
        text=True,
        env=child_env(env),
        timeout=timeout,
        check=False,
    )
