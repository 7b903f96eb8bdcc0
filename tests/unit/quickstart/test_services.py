"""Child servers: environment hygiene, health waits, and process-group cleanup."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from modelseal import errors
from modelseal.quickstart.services import Service, child_env, free_port


def test_child_env_drops_modelseal_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELSEAL_ALLOW_DISK", "true")
    monkeypatch.setenv("HTTP_PROXY", "http://proxy:3128")
    env = child_env({"X": "1"})
    assert "MODELSEAL_ALLOW_DISK" not in env
    assert "HTTP_PROXY" not in env
    assert env["X"] == "1"
    assert "127.0.0.1" in env["NO_PROXY"]


def test_service_health_and_stop(tmp_path: Path) -> None:
    port = free_port()
    server = (
        "import http.server as h\n"
        "class H(h.BaseHTTPRequestHandler):\n"
        "    def do_GET(self):\n"
        "        self.send_response(200 if self.path == '/healthz' else 404)\n"
        "        self.send_header('Content-Length', '0'); self.end_headers()\n"
        "    def log_message(self, *a): pass\n"
        f"h.HTTPServer(('127.0.0.1', {port}), H).serve_forever()\n"
    )
    svc = Service("t", [sys.executable, "-c", server], f"http://127.0.0.1:{port}", tmp_path / "l")
    svc.start(timeout=20)
    assert svc.process is not None
    assert svc.process.poll() is None
    svc.stop()
    assert svc.process.poll() is not None
    svc.stop()  # idempotent


def test_service_that_dies_reports_its_log(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", "import sys; print('boom: bad flag'); sys.exit(3)"]
    svc = Service("bad", argv, f"http://127.0.0.1:{free_port()}", tmp_path / "l")
    with pytest.raises(errors.BackendError, match="boom: bad flag"):
        svc.start(timeout=20)


def test_service_health_timeout(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", "import time; time.sleep(30)"]
    svc = Service("slow", argv, f"http://127.0.0.1:{free_port()}", tmp_path / "l")
    # the child would sleep for 30 s: start() giving up with this error at all (the suite's
    # per-test timeout bounds the wait) shows it did not wait for the child to exit
    with pytest.raises(errors.BackendError, match="healthy"):
        svc.start(timeout=0.5)
    assert svc.process is not None
    assert svc.process.poll() is None
    svc.kill()


@pytest.mark.parametrize(("code", "expected"), [(2, 2), (4, 4), (5, 5), (6, 6), (75, 75), (9, 75)])
def test_child_failures_keep_their_exit_code(code: int, expected: int) -> None:
    import subprocess

    from modelseal.quickstart.run import _child_error

    done = subprocess.CompletedProcess(["x"], code, stdout="", stderr="error: denied\n")
    err = _child_error("modelseal load", done)
    assert err.exit_code == expected
    assert "denied" in str(err)
