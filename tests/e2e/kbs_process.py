"""Start a real ``modelseal kbs serve`` process on a free loopback port for e2e tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.conftest import free_port

CLI = [sys.executable, "-c", "from modelseal.cli import main; main()"]


def start_kbs(data_dir: Path, *extra_args: str) -> tuple[str, subprocess.Popen[bytes]]:
    """Run ``kbs serve`` with ``extra_args`` until /healthz answers; return (url, process).

    The caller stops the process. A server that exits early raises with its stderr, so a
    configuration error shows up in the test report instead of as a timeout.
    """
    port = free_port()
    proc = subprocess.Popen(
        [
            *CLI, "kbs", "serve", "--data-dir", str(data_dir), "--port", str(port),
            "--log-level", "warning", *extra_args,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=dict(os.environ),
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    # generous: on a loaded 2-core machine two spawned workers take a while to import
    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise RuntimeError(f"kbs serve exited with {proc.returncode}: {err}")
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return url, proc
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("kbs serve did not start")
        time.sleep(0.1)


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """Terminate a server started by these helpers; kill it if it does not exit in 10 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
