"""Start a private swtpm (TCP socket mode, temp state dir) for tests; skip if not installed."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import free_port

BINARIES = ("swtpm", "tpm2_quote", "tpm2_createprimary", "tpm2_pcrextend", "tpm2_pcrread")


def require_swtpm() -> None:
    missing = [b for b in BINARIES if shutil.which(b) is None]
    if missing:
        pytest.skip(
            f"swtpm/tpm2-tools not installed (missing {', '.join(missing)}); "
            "run scripts/setup-system.sh"
        )


def _port_pair() -> tuple[int, int]:
    """Two consecutive free ports: tpm2-tss's swtpm TCTI talks to the control port + 1."""
    for _ in range(50):
        port = free_port()
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port, port + 1
    raise RuntimeError("no two consecutive free ports on 127.0.0.1")


@contextmanager
def running_swtpm(state_dir: Path) -> Iterator[str]:
    """Run swtpm on loopback; yields the tpm2-tools TCTI string; always stops it."""
    require_swtpm()
    state_dir.mkdir(parents=True, exist_ok=True)
    port, ctrl = _port_pair()
    proc = subprocess.Popen(
        [
            "swtpm", "socket", "--tpm2",
            "--tpmstate", f"dir={state_dir}",
            "--server", f"type=tcp,port={port},bindaddr=127.0.0.1",
            "--ctrl", f"type=tcp,port={ctrl},bindaddr=127.0.0.1",
            "--flags", "not-need-init,startup-clear",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    err = proc.stderr.read().decode() if proc.stderr else ""
                    raise RuntimeError(f"swtpm did not start: {err}") from None
                time.sleep(0.05)
        yield f"swtpm:host=127.0.0.1,port={port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()
