"""A ``modelseal dev guest-components`` child process for CoCo-path e2e tests."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from modelseal.quickstart.services import MODELSEAL, Service, free_port


def guest_components(
    log_dir: Path, kbs_url: str, ca_dir: Path, *extra: str, timeout: float = 60.0
) -> Service:
    """Start the loopback guest-components API as a mock-tdx TD whose CDH uses ``kbs_url``;
    ready once ``GET /info`` answers (the real server has no health endpoint)."""
    port = free_port()
    argv = [
        *MODELSEAL, "dev", "guest-components", "--port", str(port), "--tee", "mock-tdx",
        "--mock-tdx-dir", str(ca_dir), "--kbs-url", kbs_url, "--log-level", "warning", *extra,
    ]  # fmt: skip
    service = Service("guest-components", argv, f"http://127.0.0.1:{port}", log_dir / "gc.log")
    service.spawn()
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=2.0, trust_env=False) as client:
        while True:
            assert service.process is not None
            if service.process.poll() is not None:
                raise RuntimeError(f"guest-components exited: {service.log_tail()}")
            try:
                if client.get(service.url + "/info").status_code == 200:
                    return service
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                service.stop()
                raise RuntimeError("guest-components did not start")
            time.sleep(0.1)
