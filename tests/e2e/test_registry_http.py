"""The registry as a real uvicorn server on 127.0.0.1 (``modelseal registry serve``)."""

from __future__ import annotations

import hashlib
import os
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from modelseal.errors import ConfigError, ModelNotFound, TokenError, TransientError
from modelseal.owner.registry_client import RegistryClient, RegistryConflict
from modelseal.protocol.model_info import ModelRegistration
from tests.conftest import free_port, self_signed_cert

pytestmark = pytest.mark.e2e

CLI = [sys.executable, "-c", "from modelseal.cli import main; main()"]


@dataclass
class RegistryServer:
    """A ``modelseal registry serve`` subprocess and what a client needs to talk to it."""

    url: str
    data_dir: Path
    proc: subprocess.Popen[bytes]

    @property
    def token(self) -> str:
        return (self.data_dir / "upload-token").read_text().strip()

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_registry(
    data_dir: Path,
    *extra: str,
    port: int | None = None,
    env: dict[str, str] | None = None,
    tls: tuple[Path, Path] | None = None,
) -> RegistryServer:
    """Start ``modelseal registry serve`` (HTTPS with ``tls=(cert, key)``); wait for /healthz."""
    port = port or free_port()
    if tls is not None:
        extra = (*extra, "--tls-cert", str(tls[0]), "--tls-key", str(tls[1]))
    proc = subprocess.Popen(
        [*CLI, "registry", "serve", "--data-dir", str(data_dir), "--port", str(port), *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    verify: ssl.SSLContext | bool = True
    if tls is not None:
        verify = ssl.create_default_context(cafile=str(tls[0]))
    deadline = time.monotonic() + 20
    while True:
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise RuntimeError(f"registry exited with {proc.returncode}: {err}")
        try:
            if httpx.get(url + "/healthz", timeout=1, verify=verify).status_code == 200:
                return RegistryServer(url=url, data_dir=data_dir, proc=proc)
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("registry did not start")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    server = start_registry(tmp_path_factory.mktemp("registry") / "data")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def blob(registry: RegistryServer) -> tuple[str, bytes]:
    data = os.urandom(3 * (1 << 20) + 12345)
    r = httpx.put(f"{registry.url}/blobs/m/v1/w.sealed", content=data, headers=registry.auth())
    assert r.status_code == 201, r.text
    return f"{registry.url}/blobs/m/v1/w.sealed", data


def test_upload_needs_the_token(registry: RegistryServer) -> None:
    url = f"{registry.url}/blobs/m/v1/x"
    assert httpx.put(url, content=b"x").status_code == 401
    assert httpx.put(url, content=b"x", headers={"Authorization": "Bearer no"}).status_code == 401
    assert httpx.head(url).status_code == 404


def test_head_and_etag(blob: tuple[str, bytes]) -> None:
    url, data = blob
    r = httpx.head(url)
    assert r.status_code == 200
    assert r.headers["content-length"] == str(len(data))
    assert r.headers["accept-ranges"] == "bytes"
    assert r.headers["etag"] == f'"{hashlib.sha256(data).hexdigest()}"'
    assert r.content == b""
    full = httpx.get(url)
    assert full.content == data
    assert full.headers["etag"] == r.headers["etag"]
    assert httpx.get(url, headers={"If-None-Match": r.headers["etag"]}).status_code == 304


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [
        ("bytes=0-0", 0, 1),
        ("bytes=0-1048575", 0, 1 << 20),
        ("bytes=1048576-", 1 << 20, None),
        ("bytes=-1", -1, None),
        ("bytes=-100000", -100000, None),
        ("bytes=3000000-99999999", 3000000, None),
        ("bytes=-99999999", 0, None),
    ],
)
def test_ranges(blob: tuple[str, bytes], header: str, start: int, end: int | None) -> None:
    url, data = blob
    r = httpx.get(url, headers={"Range": header})
    want = data[start:end]
    assert r.status_code == 206
    assert r.content == want
    assert r.headers["content-length"] == str(len(want))
    first = start if start >= 0 else len(data) + start
    assert r.headers["content-range"] == f"bytes {first}-{first + len(want) - 1}/{len(data)}"


@pytest.mark.parametrize("header", ["bytes=99999999-", "bytes=-0", "bytes=5-4", "bytes=x-"])
def test_unsatisfiable_ranges(blob: tuple[str, bytes], header: str) -> None:
    url, data = blob
    r = httpx.get(url, headers={"Range": header})
    assert r.status_code == 416
    assert r.headers["content-range"] == f"bytes */{len(data)}"


def test_range_at_exact_end_is_416(blob: tuple[str, bytes]) -> None:
    url, data = blob
    r = httpx.get(url, headers={"Range": f"bytes={len(data)}-"})
    assert r.status_code == 416
    r = httpx.get(url, headers={"Range": f"bytes={len(data) - 1}-"})
    assert r.status_code == 206
    assert r.content == data[-1:]


def test_concurrent_ranged_downloads(blob: tuple[str, bytes]) -> None:
    """16 parallel clients fetch disjoint and overlapping ranges; every byte is right."""
    url, data = blob
    step = 256 * 1024
    spans = [(i, min(len(data), i + step + 17)) for i in range(0, len(data), step)]

    def fetch(span: tuple[int, int]) -> bytes:
        with httpx.Client(timeout=30) as c:
            return c.get(url, headers={"Range": f"bytes={span[0]}-{span[1] - 1}"}).content

    with ThreadPoolExecutor(16) as pool:
        parts = list(pool.map(fetch, spans))
    for (s, e), part in zip(spans, parts, strict=True):
        assert part == data[s:e]
    with ThreadPoolExecutor(4) as pool:
        fulls = list(pool.map(lambda _: httpx.get(url, timeout=30).content, range(4)))
    assert all(f == data for f in fulls)


def test_streamed_upload_and_download_in_constant_memory(registry: RegistryServer) -> None:
    """128 MiB through the server raises its peak RSS by far less than the blob size."""
    size = 128 << 20
    block = os.urandom(1 << 20)

    def body() -> Iterator[bytes]:
        for _ in range(size // len(block)):
            yield block

    def peak_rss() -> int:
        status = Path(f"/proc/{registry.proc.pid}/status").read_text()
        line = next(ln for ln in status.splitlines() if ln.startswith("VmHWM:"))
        return int(line.split()[1]) * 1024

    before = peak_rss()
    url = f"{registry.url}/blobs/big/v1/w.sealed"
    r = httpx.put(url, content=body(), headers=registry.auth(), timeout=120)
    assert r.status_code == 201, r.text
    expect = hashlib.sha256()
    for _ in range(size // len(block)):
        expect.update(block)
    assert r.json()["sha256"] == expect.hexdigest()
    got = hashlib.sha256()
    n = 0
    with httpx.stream("GET", url, timeout=120) as resp:
        for chunk in resp.iter_bytes():
            got.update(chunk)
            n += len(chunk)
    assert n == size
    assert got.hexdigest() == expect.hexdigest()
    assert peak_rss() - before < 64 << 20


def test_model_info_over_http(registry: RegistryServer, blob: tuple[str, bytes]) -> None:
    url, data = blob
    r = httpx.put(
        f"{registry.url}/models/m/versions/v1",
        headers=registry.auth(),
        json={
            "format": "cnap",
            "framework": "tensorflow",
            "kbs": "simple_kbs",
            "kbs_url": "http://127.0.0.1:9/kbs/v1/keys/k/transfer",
            "key_id": "k",
            "files": [
                {
                    "path": "w",
                    "blob": "w.sealed",
                    "sealed_size": len(data),
                    "sha256": hashlib.sha256(data).hexdigest(),
                }
            ],
        },
    )
    assert r.status_code == 201, r.text
    info = httpx.get(f"{registry.url}/models/m").json()
    assert info["url"] == url
    assert info["encrypted"] is True
    assert info["format"] == "cnap"
    # the version is now immutable
    assert httpx.put(url, content=b"x", headers=registry.auth()).status_code == 409


@pytest.mark.slow
def test_restart_keeps_records_and_token_then_serves_tls(tmp_path: Path) -> None:
    """Records, blobs and the upload token survive a restart; the restart also switches the
    same data directory to ``--tls-cert/--tls-key`` (one server start serves both checks)."""
    server = start_registry(tmp_path / "d")
    token = server.token
    try:
        r = httpx.put(f"{server.url}/blobs/a/b/c", content=b"hello", headers=server.auth())
        assert r.status_code == 201
    finally:
        server.stop()
    cert, key = self_signed_cert(tmp_path)
    again = start_registry(tmp_path / "d", tls=(cert, key))
    ctx = ssl.create_default_context(cafile=str(cert))
    try:
        assert again.url.startswith("https://")
        assert again.token == token
        assert httpx.get(f"{again.url}/blobs/a/b/c", verify=ctx).content == b"hello"
        assert httpx.get(again.url + "/healthz", verify=ctx).json() == {"status": "ok"}
        with RegistryClient(again.url, verify=str(cert)) as client:
            assert client.list_models() == []
        with pytest.raises(httpx.ConnectError):
            httpx.get(again.url + "/healthz", timeout=5)  # untrusted certificate
    finally:
        again.stop()


@pytest.mark.slow
def test_registry_over_s3_blob_store(tmp_path: Path) -> None:
    """``--blob-store s3://...`` end to end, against moto's S3 server (a mock of S3)."""
    moto_server = pytest.importorskip("moto.server")
    import boto3

    s3_port = free_port()
    s3 = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=s3_port, verbose=False)
    s3.start()
    creds = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}
    endpoint = f"http://127.0.0.1:{s3_port}"
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )
    client.create_bucket(Bucket="models")
    client.close()
    server = start_registry(
        tmp_path / "d", "--blob-store", f"s3://models/reg?endpoint={endpoint}", env=creds
    )
    try:
        data = os.urandom(9 << 20)
        url = f"{server.url}/blobs/m/v1/w.sealed"
        assert httpx.put(url, content=data, headers=server.auth(), timeout=60).status_code == 201
        head = httpx.head(url)
        assert head.headers["etag"] == f'"{hashlib.sha256(data).hexdigest()}"'
        r = httpx.get(url, headers={"Range": "bytes=8388600-8388620"})
        assert r.status_code == 206
        assert r.content == data[8388600:8388621]
        assert httpx.get(url, timeout=60).content == data
        assert httpx.get(url, headers={"Range": f"bytes={len(data)}-"}).status_code == 416
    finally:
        server.stop()
        s3.stop()


# -- the publisher's registry client -------------------------------------------------------


def _file(tmp_path: Path, name: str, size: int) -> tuple[Path, str]:
    path = tmp_path / name
    path.write_bytes(os.urandom(size))
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def test_client_upload_status_register_read(registry: RegistryServer, tmp_path: Path) -> None:
    blob, sha = _file(tmp_path, "w", 2_500_000)
    seen: list[int] = []
    with RegistryClient(registry.url, registry.token) as client:
        assert client.blob_status("rc", "v1", "w.enc") is None
        status = client.upload_blob("rc", "v1", "w.enc", blob, sha256=sha, progress=seen.append)
        assert sum(seen) == blob.stat().st_size
        assert client.blob_status("rc", "v1", "w.enc") == status
        assert status.sha256 == sha
        reg = ModelRegistration.from_data(
            {
                "format": "cnap",
                "kbs": "simple_kbs",
                "kbs_url": "http://kbs/kbs/v1/keys/a/b/c/transfer",
                "key_id": "a/b/c",
                "files": [
                    {"path": "w", "blob": "w.enc", "sealed_size": status.size, "sha256": sha}
                ],
            }
        )
        info, created = client.register("rc", "v1", reg)
        assert created
        assert info.url == f"{registry.url}/blobs/rc/v1/w.enc"
        assert client.register("rc", "v1", reg) == (info, False)
        assert client.get_model("rc") == info
        assert client.find_model("m", "v2") is None
        assert "rc" in [m.id for m in client.list_models()]
        target = tmp_path / "back"
        client.download("rc", "v1", "w.enc", target)
        assert target.read_bytes() == blob.read_bytes()
        with pytest.raises(RegistryConflict):
            client.upload_blob("rc", "v1", "w.enc", blob, sha256=sha)
        with pytest.raises(ModelNotFound):
            client.get_model("nope")
        client.delete_version("rc", "v1")
        with pytest.raises(ModelNotFound):
            client.get_model("rc")


def test_client_wrong_or_missing_token(registry: RegistryServer, tmp_path: Path) -> None:
    blob, sha = _file(tmp_path, "x", 10)
    with RegistryClient(registry.url, "wrong") as client, pytest.raises(TokenError):
        client.upload_blob("rc", "v9", "x", blob, sha256=sha)
    with RegistryClient(registry.url) as client, pytest.raises(ConfigError):
        client.upload_blob("rc", "v9", "x", blob, sha256=sha)


def test_client_unreachable_registry_is_transient(tmp_path: Path) -> None:
    client = RegistryClient(f"http://127.0.0.1:{free_port()}", backoff=0.01)
    with client, pytest.raises(TransientError):
        client.get_model("rc")


def test_client_invalid_names_never_reach_the_wire(
    registry: RegistryServer, tmp_path: Path
) -> None:
    blob, sha = _file(tmp_path, "x", 10)
    with RegistryClient(registry.url, registry.token) as client:
        with pytest.raises(ConfigError):
            client.upload_blob("rc", "v1", "../../etc/passwd", blob, sha256=sha)
        with pytest.raises(ConfigError):
            client.get_model("..")
    with pytest.raises(ConfigError):
        RegistryClient("ftp://x")
