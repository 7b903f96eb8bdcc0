"""``modelseal gateway`` and ``modelseal request`` as an operator and a client run them.

Real processes on 127.0.0.1: the gateway (mock-tdx, a loader receipt), a recording
upstream, and ``modelseal request`` with a policy file. Exit codes and messages are the
contract: 0 and the body, or 4 and the reason with the upstream never reached.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from modelseal.crypto.tls_identity import TlsKey
from modelseal.quickstart.services import MODELSEAL, child_env
from modelseal.ratls.tls import TlsStream
from modelseal.tee.mock_tdx.attester import DEFAULT_MR_TD
from modelseal.tee.mock_tdx.ca import MockTdxCA
from tests.conftest import free_port
from tests.ratls_helpers import (
    MODEL,
    Upstream,
    last_byte_changed,
    relay_certificate,
    upstream_server,
    wait_listening,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def shared_upstream() -> Iterator[Upstream]:
    with upstream_server() as up:
        yield up


@pytest.fixture
def upstream(shared_upstream: Upstream) -> Upstream:
    shared_upstream.received.clear()
    return shared_upstream


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, shared_upstream: Upstream
) -> Iterator[dict[str, Any]]:
    tmp_path = tmp_path_factory.mktemp("gateway")
    upstream = shared_upstream
    receipt = tmp_path / "models" / ".modelseal" / "receipt.json"
    receipt.parent.mkdir(parents=True)
    receipt.write_text(
        json.dumps({"format_version": "modelseal-receipt/1", "model_digest": MODEL}),
        encoding="utf-8",
    )
    port = free_port()
    log = tmp_path / "gateway.log"
    ca = tmp_path / "ca"
    # where a careless process would write: its working, temporary and home directories
    scratch = {name: tmp_path / name for name in ("cwd", "tmp", "home")}
    for directory in scratch.values():
        directory.mkdir()
    env = child_env({"TMPDIR": str(scratch["tmp"]), "HOME": str(scratch["home"])})
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*MODELSEAL, "-vv", "gateway", "--listen", f"127.0.0.1:{port}",
             "--upstream", upstream.url, "--tee", "mock-tdx", "--mock-tdx-dir", str(ca),
             "--receipt", str(receipt)],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
            cwd=scratch["cwd"],
        )  # fmt: skip
    try:
        wait_listening(port, proc, log)
        yield {
            "url": f"https://127.0.0.1:{port}",
            "root": ca / "root-ca.pem",
            "log": log,
            "scratch": scratch,
            "ca": ca,
        }
    finally:
        proc.terminate()
        proc.wait(10)


def _policy(path: Path, *, mr_td: str = DEFAULT_MR_TD.hex(), model: str = MODEL) -> Path:
    path.write_text(
        "apiVersion: modelseal/v1\nkind: ReleasePolicy\ntee: [mock-tdx]\n"
        f"measurements:\n  - mr_td: {mr_td}\nmodel_digest: {model}\n",
        encoding="utf-8",
    )
    return path


def _request(gw: dict[str, Any], policy: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MODELSEAL, "request", gw["url"] + "/v1/classify", "--policy", str(policy),
         "--mock-tdx-root", str(gw["root"]), *extra],
        capture_output=True, text=True, env=child_env(), timeout=60, check=False,
    )  # fmt: skip


def test_request_with_the_right_policy_prints_the_body(
    tmp_path: Path, gateway: dict[str, Any], upstream: Upstream
) -> None:
    body = tmp_path / "prompt.json"
    body.write_bytes(b'{"prompt": "hello"}')
    done = _request(gateway, _policy(tmp_path / "p.yaml"), "--data", f"@{body}", "--show-claims")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"echo": '{"prompt": "hello"}', "bytes": 19}
    claims = json.loads(done.stderr[done.stderr.index("{") :])
    assert claims["tee"] == "mock-tdx"
    assert claims["models"] == [MODEL]
    assert claims["fresh"]
    assert upstream.received == [("POST", "/v1/classify", b'{"prompt": "hello"}')]
    # the TLS key went nowhere: nothing written anywhere the gateway could write by default,
    # and its test CA directory holds only the CA's own files
    for directory in gateway["scratch"].values():
        assert list(directory.iterdir()) == [], directory
    fresh_ca = MockTdxCA.load_or_create(tmp_path / "fresh-ca").directory
    assert {p.name for p in gateway["ca"].iterdir()} == {p.name for p in fresh_ca.iterdir()}
    log = gateway["log"].read_text()
    assert "TEST ONLY mock-tdx" in log
    assert "TLS key in memory only" in log
    assert "PRIVATE KEY" not in log


@pytest.mark.parametrize("what", ["measurement", "model"])
def test_wrong_policy_exits_4_and_the_upstream_sees_nothing(
    tmp_path: Path, gateway: dict[str, Any], upstream: Upstream, what: str
) -> None:
    policy = (
        _policy(tmp_path / "p.yaml", mr_td=last_byte_changed(DEFAULT_MR_TD.hex()))
        if what == "measurement"
        else _policy(tmp_path / "p.yaml", model=last_byte_changed(MODEL))
    )
    done = _request(gateway, policy, "--data", "secret prompt")
    assert done.returncode == 4, done.stderr
    assert "does not satisfy the policy" in done.stderr
    assert ("mr_td" if what == "measurement" else "not among the attested models") in done.stderr
    assert done.stdout == ""
    assert upstream.received == []


def test_request_to_an_unattested_tls_server_exits_4(tmp_path: Path) -> None:
    key = TlsKey()
    ctx = key.server_context(relay_certificate(key, None))
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        sock, _ = listener.accept()
        stream = TlsStream.server(ctx, sock, 10)
        try:
            stream.handshake()
            assert stream.read() == b""  # the client hangs up without sending anything
        finally:
            stream.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    root = MockTdxCA.load_or_create(tmp_path / "ca").root_pem_path
    done = subprocess.run(
        [*MODELSEAL, "request", f"https://127.0.0.1:{listener.getsockname()[1]}/",
         "--policy", str(_policy(tmp_path / "p.yaml")), "--mock-tdx-root", str(root),
         "--data", "secret prompt"],
        capture_output=True, text=True, env=child_env(), timeout=60, check=False,
    )  # fmt: skip
    thread.join(10)
    listener.close()
    assert done.returncode == 4, done.stderr
    assert "carries no attestation evidence" in done.stderr


def test_gateway_refuses_an_insecure_kind_unless_told(tmp_path: Path, upstream: Upstream) -> None:
    port = free_port()
    args = [*MODELSEAL, "gateway", "--listen", f"127.0.0.1:{port}", "--upstream", upstream.url,
            "--tee", "sample"]  # fmt: skip
    refused = subprocess.run(
        args, capture_output=True, text=True, env=child_env(), timeout=60, check=False
    )
    assert refused.returncode == 2
    assert "refusing to start" in refused.stderr
    assert "--insecure-allow-sample" in refused.stderr

    log = tmp_path / "sample.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*args, "--insecure-allow-sample"], stdout=out, stderr=subprocess.STDOUT,
            env=child_env(), start_new_session=True,
        )  # fmt: skip
    try:
        wait_listening(port, proc, log)
        assert "WARNING: INSECURE sample TEE" in log.read_text()
        policy = tmp_path / "sample.yaml"
        policy.write_text("apiVersion: modelseal/v1\nkind: ReleasePolicy\ntee: [sample]\n")
        base = [*MODELSEAL, "request", f"https://127.0.0.1:{port}/hi", "--policy", str(policy)]
        denied = subprocess.run(
            base, capture_output=True, text=True, env=child_env(), timeout=60, check=False
        )
        assert denied.returncode == 4
        assert "--insecure-allow-sample" in denied.stderr
        allowed = subprocess.run(
            [*base, "--insecure-allow-sample"],
            capture_output=True, text=True, env=child_env(), timeout=60, check=False,
        )  # fmt: skip
        assert allowed.returncode == 0, allowed.stderr
        assert json.loads(allowed.stdout) == {"path": "/hi"}
    finally:
        proc.terminate()
        proc.wait(10)


def _samples(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = httpx.get(url, timeout=10).text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_gateway_serves_its_metrics_and_logs_json(tmp_path: Path, upstream: Upstream) -> None:
    port = free_port()
    log = tmp_path / "gateway.log"
    ca = tmp_path / "ca"
    receipt = tmp_path / "receipt.json"
    receipt.write_text(
        json.dumps({"format_version": "modelseal-receipt/1", "model_digest": MODEL}),
        encoding="utf-8",
    )
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*MODELSEAL, "-vv", "gateway", "--listen", f"127.0.0.1:{port}",
             "--upstream", upstream.url, "--tee", "mock-tdx", "--mock-tdx-dir", str(ca),
             "--receipt", str(receipt), "--log-format", "json"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            env=child_env({"MODELSEAL_METRICS_PORT": "0"}),
        )  # fmt: skip
    try:
        wait_listening(port, proc, log)  # one plain TCP connection: a failed handshake
        # the kernel chose the metrics port; the start-up lines name it
        (url,) = re.findall(r"metrics (http://127\.0\.0\.1:\d+/metrics)", log.read_text())
        connections = "modelseal_gateway_connections_total"
        handshake_failed = (connections, frozenset({("result", "handshake_failed")}))
        before = _samples(url)
        for _ in range(200):  # a connection's outcome is counted when its thread ends
            if before[handshake_failed] == 1:
                break
            time.sleep(0.05)
            before = _samples(url)
        assert before[handshake_failed] == 1
        served = (connections, frozenset({("result", "served")}))
        forwarded = (
            "modelseal_http_request_duration_seconds_count",
            frozenset({("server", "gateway"), ("route", "upstream"), ("method", "POST"),
                       ("status_class", "2xx")}),
        )  # fmt: skip
        fresh = ("modelseal_gateway_fresh_evidence_total", frozenset({("result", "ok")}))
        assert before[served] == before[fresh] == 0
        root = ca / "root-ca.pem"
        done = subprocess.run(
            [*MODELSEAL, "request", f"https://127.0.0.1:{port}/v1/classify",
             "--policy", str(_policy(tmp_path / "p.yaml")), "--mock-tdx-root",
             str(root), "--data", "hello"],
            capture_output=True, text=True, env=child_env(), timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        after = _samples(url)
        for _ in range(200):
            if after[served] == 1:
                break
            time.sleep(0.05)
            after = _samples(url)
        assert after[served] == 1
        assert after[fresh] == 1
        assert after.get(forwarded, 0) == 1
        assert after[handshake_failed] == before[handshake_failed]
        now = time.time()
        assert now < after[("modelseal_gateway_certificate_expiry_timestamp_seconds", frozenset())]
        assert after[("modelseal_gateway_connection_limit", frozenset())] == 256
        # -vv at JSON: every log line the gateway wrote is one JSON object
        records = [json.loads(line) for line in log.read_text().splitlines() if line[:1] == "{"]
        assert [
            r["level"]
            for r in records
            if r["logger"] == "modelseal.ratls.gateway"
            and r["message"].startswith("TLS handshake with 127.0.0.1 failed")
        ] == ["DEBUG"]
    finally:
        proc.terminate()
        proc.wait(10)


def test_gateway_refuses_metrics_off_loopback_without_a_token(upstream: Upstream) -> None:
    refused = subprocess.run(
        [*MODELSEAL, "gateway", "--listen", f"127.0.0.1:{free_port()}", "--upstream",
         upstream.url, "--tee", "sample", "--insecure-allow-sample",
         "--metrics-port", "0", "--metrics-host", "0.0.0.0"],
        capture_output=True, text=True, env=child_env(), timeout=60, check=False,
    )  # fmt: skip
    assert refused.returncode == 2
    assert "--metrics-token-file" in refused.stderr
