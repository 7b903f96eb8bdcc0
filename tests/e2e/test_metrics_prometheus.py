"""Metrics and logs end to end: a real Prometheus scrapes a real ``kbs serve`` and a real
``registry serve`` on 127.0.0.1 while a model is published and loaded; the loader writes
its textfile; and no secret of the whole flow reaches any log.

Prometheus (Debian package ``prometheus``, scripts/system-packages.txt) runs with a
temporary configuration scraping both servers every second: the KBS's endpoint on
loopback without a token, the registry's behind a bearer token (``credentials_file``).
The KBS keeps its KEK in a SoftHSM2 token, so the token's PIN is one of the secrets the
logs must not show. Both servers log JSON at debug level (``-vv``).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from modelseal.crypto.jose.jwk import TeeKeyPair
from modelseal.kbs.admin_auth import load_admin_credential, mint_admin_token
from modelseal.loader.destination import inspect_destination
from modelseal.owner.kbs_admin import KbsAdminClient
from modelseal.owner.publish import PublishRequest, publish
from modelseal.quickstart.services import MODELSEAL, Service, free_port, run_cli
from tests.e2e.kbs_process import stop_process
from tests.integration.kbs_rcar.conftest import attestation_body, open_jwe

if TYPE_CHECKING:
    from tests.hsm import SoftHsm

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

PROMETHEUS = shutil.which("prometheus")
SAMPLE_POLICY = {"apiVersion": "modelseal/v1", "kind": "ReleasePolicy", "tee": ["sample"]}
TDX_ONLY_POLICY = {"apiVersion": "modelseal/v1", "kind": "ReleasePolicy", "tee": ["tdx"]}
METRICS_TOKEN = "scrape-" + "9f3c1d2e8a7b6c5d4e3f2a1b0c9d8e7f"
AUTH = {"version": "0.4.0", "tee": "sample", "extra-params": ""}
BLOB_ROUTE = "/blobs/{model_id}/{version}/{path:path}"


@dataclass
class Stack:
    root: Path
    kbs: Service
    registry: Service
    prometheus: subprocess.Popen[bytes]
    prometheus_url: str
    admin_token: str
    upload_token: str
    pin: str
    secrets: list[str] = field(default_factory=list)

    def publish(self, model_id: str, files: dict[str, bytes], policy: dict[str, Any]) -> None:
        src = self.root / "src" / model_id
        for rel, data in files.items():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            (src / rel).write_bytes(data)
        request = PublishRequest(
            source=src,
            registry_url=self.registry.url,
            kbs_url=self.kbs.url,
            model_id=model_id,
            version="v1",
            registry_token=self.upload_token,
            policy=policy,
            segment_size=64 << 10,
            staging_dir=self.root / "staging" / model_id,
        )
        with KbsAdminClient(self.kbs.url, self.admin_token) as admin:
            publish(request, admin)

    def query(self, promql: str) -> list[dict[str, Any]]:
        r = httpx.get(f"{self.prometheus_url}/api/v1/query", params={"query": promql}, timeout=5)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def value(self, promql: str) -> float | None:
        """The single value of an instant query, or None while the series is absent."""
        result = self.query(promql)
        return float(result[0]["value"][1]) if result else None


def _prometheus_config(root: Path, kbs_metrics: int, registry_metrics: int) -> Path:
    token_file = root / "scrape-token"
    token_file.write_text(METRICS_TOKEN + "\n")
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {
                "job_name": "kbs",
                "static_configs": [{"targets": [f"127.0.0.1:{kbs_metrics}"]}],
            },
            {
                "job_name": "registry",
                "authorization": {"type": "Bearer", "credentials_file": str(token_file)},
                "static_configs": [{"targets": [f"127.0.0.1:{registry_metrics}"]}],
            },
        ],
    }
    path = root / "prometheus.yml"
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


def _start_prometheus(root: Path, config: Path) -> tuple[subprocess.Popen[bytes], str]:
    assert PROMETHEUS is not None
    port = free_port()
    log = (root / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={config}",
            f"--storage.tsdb.path={root / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    log.close()
    return proc, f"http://127.0.0.1:{port}"


def _wait_ready(proc: subprocess.Popen[bytes], url: str, root: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError((root / "prometheus.log").read_text(errors="replace"))
        try:
            if httpx.get(url + "/-/ready", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError("prometheus did not become ready")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, softhsm: SoftHsm) -> Iterator[Stack]:
    if PROMETHEUS is None:
        pytest.skip("prometheus is not installed (scripts/setup-system.sh installs it)")
    root = tmp_path_factory.mktemp("metrics-e2e")
    kbs_port, kbs_metrics, reg_port, reg_metrics = (free_port() for _ in range(4))
    pin_file = softhsm.base / "modelseal.pin"
    kek_uri = softhsm.uri("modelseal", pin_file, f"kek-metrics-{os.getpid()}")
    kbs = Service(
        "kbs",
        [
            *MODELSEAL, "-vv", "kbs", "serve", "--data-dir", str(root / "kbs"),
            "--port", str(kbs_port), "--insecure-allow-sample", "--kek-uri", kek_uri,
            "--log-level", "debug", "--log-format", "json",
            "--metrics-port", str(kbs_metrics),
        ],
        f"http://127.0.0.1:{kbs_port}",
        root / "kbs.log",
    )  # fmt: skip
    registry = Service(
        "registry",
        [
            *MODELSEAL, "-vv", "registry", "serve", "--data-dir", str(root / "registry"),
            "--port", str(reg_port), "--log-format", "json",
            "--metrics-port", str(reg_metrics),
            "--metrics-token-file", str(_token_file(root)),
        ],
        f"http://127.0.0.1:{reg_port}",
        root / "registry.log",
    )  # fmt: skip
    config = _prometheus_config(root, kbs_metrics, reg_metrics)
    prometheus, prometheus_url = _start_prometheus(root, config)
    try:
        kbs.spawn()
        registry.spawn()
        with ThreadPoolExecutor(3) as pool:
            waits = [
                pool.submit(kbs.wait_healthy, 60),
                pool.submit(registry.wait_healthy, 60),
                pool.submit(_wait_ready, prometheus, prometheus_url, root),
            ]
            for wait in waits:
                wait.result()
        credential = load_admin_credential(root / "kbs")
        admin = mint_admin_token(credential, ttl=3600, now=time.time())
        upload = (root / "registry" / "upload-token").read_text().strip()
        pin = pin_file.read_text().strip()
        yield Stack(root, kbs, registry, prometheus, prometheus_url, admin, upload, pin)
    finally:
        kbs.stop()
        registry.stop()
        stop_process(prometheus)


def _token_file(root: Path) -> Path:
    path = root / "registry-metrics-token"
    path.write_text(METRICS_TOKEN + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def shm() -> Iterator[Path]:
    if not inspect_destination(Path("/dev/shm")).memory_backed:
        pytest.skip("/dev/shm is not memory-backed here")
    path = Path(tempfile.mkdtemp(prefix="ms-metrics-", dir="/dev/shm"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _textfile(path: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(path.read_text())
        for s in family.samples
    }


def test_prometheus_sees_the_release_and_download(stack: Stack, shm: Path) -> None:
    files = {"config.json": b'{"model_type": "toy"}', "weights.bin": os.urandom(300_000)}
    stack.publish("metrics-ok", files, SAMPLE_POLICY)
    stack.publish("metrics-denied", {"w.bin": os.urandom(1000)}, TDX_ONLY_POLICY)
    textfile = shm / "modelseal-loader.prom"
    ok = run_cli(
        ["load", "--model", f"{stack.registry.url}/models/metrics-ok", "--dest",
         str(shm / "ok"), "--tee", "sample", "--metrics-textfile", str(textfile)],
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    denied = run_cli(
        ["load", "--model", f"{stack.registry.url}/models/metrics-denied", "--dest",
         str(shm / "denied"), "--tee", "sample", "--metrics-textfile", str(textfile)],
    )  # fmt: skip
    assert denied.returncode == 4, denied.stderr

    queries = {
        "attested": 'sum(modelseal_attestations_total{job="kbs",tee="sample",result="ok"})',
        "released": 'modelseal_key_release_decisions_total{job="kbs",'
        'key_id="models/metrics-ok/v1",decision="allow",api="rcar"}',
        "denied": 'modelseal_key_release_decisions_total{job="kbs",'
        'key_id="models/metrics-denied/v1",decision="deny",api="rcar"}',
        "verify_count": 'modelseal_attestation_verify_duration_seconds_count{tee="sample"}',
        "resource_2xx": 'sum(modelseal_http_request_duration_seconds_count{job="kbs",'
        'route="/kbs/v0/resource/{path:path}",status_class="2xx"})',
        "blobs_2xx": 'sum(modelseal_http_request_duration_seconds_count{job="registry",'
        f'route="{BLOB_ROUTE}",status_class="2xx"}})',
        "admin_2xx": 'sum(modelseal_http_request_duration_seconds_count{job="kbs",'
        'route=~"/modelseal/v1/.*",status_class="2xx"})',
    }
    expected = {
        "attested": 2,
        "released": 1,
        "denied": 1,
        "verify_count": 2,
        "resource_2xx": 1,
        "blobs_2xx": 3,  # two sealed files and the manifest, at least one GET each
        "admin_2xx": 2,
    }
    deadline = time.monotonic() + 20
    while True:
        seen = {name: stack.value(q) for name, q in queries.items()}
        if all((seen[k] or 0) >= v for k, v in expected.items()):
            break
        assert time.monotonic() < deadline, f"Prometheus saw {seen}, expected {expected}"
        time.sleep(0.5)
    up = {r["metric"]["job"]: r["value"][1] for r in stack.query("up")}
    assert up == {"kbs": "1", "registry": "1"}
    # the verification latency is a histogram Prometheus can take quantiles of
    p99 = stack.value(
        "histogram_quantile(0.99, sum by (le) "
        "(modelseal_attestation_verify_duration_seconds_bucket{tee='sample'}))"
    )
    assert p99 is not None
    assert p99 > 0

    # the loader's textfile: both runs, counters carried from the first into the second
    samples = _textfile(textfile)
    sealed = sum(p.stat().st_size for p in (stack.root / "staging" / "metrics-ok").rglob("*"))
    assert samples[("modelseal_loader_runs_total", (("result", "ok"),))] == 1
    assert samples[("modelseal_loader_runs_total", (("result", "denied"),))] == 1
    failures = "modelseal_loader_authentication_failures_total"
    assert samples[(failures, (("kind", "attestation"),))] == 1
    assert samples[(failures, (("kind", "integrity"),))] == 0
    assert samples[("modelseal_loader_decrypted_bytes_total", ())] == sum(
        len(v) for v in files.values()
    )
    fetched = samples[("modelseal_loader_fetched_bytes_total", ())]
    assert fetched >= sum(len(v) for v in files.values())
    assert fetched >= sealed * 0.9 or sealed == 0
    assert samples[("modelseal_loader_last_success_timestamp_seconds", ())] > 0
    assert (
        samples[("modelseal_loader_last_run_timestamp_seconds", ())]
        >= samples[("modelseal_loader_last_success_timestamp_seconds", ())]
    )


def test_no_secret_in_any_log(stack: Stack) -> None:
    """A full release with the RCAR client in this process (so its token and session are
    known), then every log line of both servers is JSON and none holds a secret."""
    stack.publish("metrics-secret", {"w.bin": os.urandom(5000)}, SAMPLE_POLICY)
    keys = TeeKeyPair.generate()
    with httpx.Client(base_url=stack.kbs.url, timeout=10) as client:
        r = client.post(
            "/kbs/v0/auth", json={"version": "0.4.0", "tee": "sample", "extra-params": ""}
        )
        session = r.cookies["kbs-session-id"]
        r = client.post("/kbs/v0/attest", json=attestation_body(r.json()["nonce"], keys))
        assert r.status_code == 200, r.text
        token = r.json()["token"]
        # by session cookie, then by bearer token
        first = client.get("/kbs/v0/resource/models/metrics-secret/v1")
        second = client.get(
            "/kbs/v0/resource/models/metrics-secret/v1",
            headers={"Authorization": f"Bearer {token}", "X-Request-Id": "secret-flow-2"},
        )
    dek = open_jwe(first, keys)
    assert open_jwe(second, keys) == dek
    forms = [
        dek.hex(),
        base64.b64encode(dek).decode(),
        base64.urlsafe_b64encode(dek).decode().rstrip("="),
    ]
    secrets = {
        "DEK (hex)": forms[0],
        "DEK (base64)": forms[1],
        "DEK (base64url)": forms[2],
        "admin token": stack.admin_token,
        "upload token": stack.upload_token,
        "HSM PIN": stack.pin,
        "metrics token": METRICS_TOKEN,
        "attestation token": token,
        "attestation token signature": token.split(".")[-1],
        "session id": session,
    }
    # the servers flush each line as it is written; give the last ones a moment
    time.sleep(0.5)
    for name in ("kbs.log", "registry.log"):
        text = (stack.root / name).read_text(errors="replace")
        lines = [line for line in text.splitlines() if line.startswith("{")]
        assert lines, name
        for line in lines:
            doc = json.loads(line)
            assert {"ts", "level", "logger", "message", "pid"} <= set(doc)
        # names only: a failing run must not print the secret it found
        leaked = sorted(what for what, value in secrets.items() if value in text)
        assert leaked == [], f"{name} holds: {', '.join(leaked)}"
    kbs_lines = [json.loads(x) for x in (stack.root / "kbs.log").read_text().splitlines()
                 if x.startswith("{")]  # fmt: skip
    released = [d for d in kbs_lines if d["message"].startswith("released models/metrics-secret")]
    assert len(released) == 2
    assert released[1]["request_id"] == "secret-flow-2"
    # every line of that request carries its id: the decision, the release, the access line
    lines_of = [d for d in kbs_lines if d.get("request_id") == "secret-flow-2"]
    assert {d["logger"] for d in lines_of} >= {
        "modelseal.kbs",
        "modelseal.kbs.release",
        "modelseal.http",
    }
    access = [d for d in lines_of if d["logger"] == "modelseal.http"]
    assert [d["http_route"] for d in access] == ["/kbs/v0/resource/{path:path}"]
