"""``modelseal load`` against a real KBS and a real registry on 127.0.0.1.

Models are published with ``owner.publish`` (seal, upload, key + policy in the KBS); the
loader runs as a subprocess exactly as an initContainer would and is judged by its exit
code and by what it leaves in the destination.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from modelseal.kbs.admin_auth import load_admin_credential, mint_admin_token
from modelseal.loader.destination import TEMP_PREFIX, inspect_destination
from modelseal.owner.kbs_admin import KbsAdminClient
from modelseal.owner.publish import PublishRequest, publish
from modelseal.protocol.model_info import ModelInfo
from modelseal.quickstart.services import (
    MODELSEAL,
    Service,
    child_env,
    kbs_service,
    registry_service,
    run_cli,
)
from tests.e2e.tcp_proxy import ThrottlingProxy

pytestmark = pytest.mark.e2e

SAMPLE_POLICY = {"apiVersion": "modelseal/v1", "kind": "ReleasePolicy", "tee": ["sample"]}
TDX_ONLY_POLICY = {"apiVersion": "modelseal/v1", "kind": "ReleasePolicy", "tee": ["tdx"]}


@dataclass
class Stack:
    root: Path
    kbs: Service
    registry: Service
    admin_token: str
    upload_token: str

    def publish(
        self,
        model_id: str,
        files: dict[str, bytes],
        *,
        policy: dict[str, Any] = SAMPLE_POLICY,
        segment_size: int = 64 << 10,
    ) -> ModelInfo:
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
            segment_size=segment_size,
            staging_dir=self.root / "staging" / model_id,
        )
        with KbsAdminClient(self.kbs.url, self.admin_token) as admin:
            return publish(request, admin).model

    def model_url(self, model_id: str, base: str | None = None) -> str:
        return f"{base or self.registry.url}/models/{model_id}"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("loader-e2e")
    logs = root / "logs"
    logs.mkdir()
    kbs = kbs_service(root / "kbs", logs)
    registry = registry_service(root / "registry", logs)
    try:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda s: s.start(timeout=60), (kbs, registry)))
        credential = load_admin_credential(root / "kbs")
        token = mint_admin_token(credential, ttl=3600, now=time.time())
        upload = (root / "registry" / "upload-token").read_text().strip()
        yield Stack(root, kbs, registry, token, upload)
    finally:
        kbs.stop()
        registry.stop()


@pytest.fixture
def shm() -> Iterator[Path]:
    if not inspect_destination(Path("/dev/shm")).memory_backed:
        pytest.skip("/dev/shm is not memory-backed here")
    path = Path(tempfile.mkdtemp(prefix="ms-e2e-", dir="/dev/shm"))
    try:
        yield path / "models"
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def disk_dir() -> Iterator[Path]:
    """A directory on a disk-backed filesystem (/tmp may itself be tmpfs: check)."""
    for candidate in (Path(__file__).resolve().parent, Path.home(), Path("/var/tmp")):
        if candidate.is_dir() and not inspect_destination(candidate).memory_backed:
            path = Path(tempfile.mkdtemp(prefix=".ms-e2e-disk-", dir=candidate))
            try:
                yield path / "models"
            finally:
                shutil.rmtree(path, ignore_errors=True)
            return
    pytest.skip("no disk-backed directory available")


def load(url: str, dest: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return run_cli(["load", "--model", url, "--dest", str(dest), "--tee", "sample", *extra])


def plaintext_files(dest: Path) -> list[Path]:
    return [p for p in dest.rglob("*") if p.is_file()] if dest.exists() else []


MULTI = {
    "config.json": b'{"model_type": "toy"}',
    "tokenizer/vocab.txt": b"\n".join(b"tok%d" % i for i in range(5000)),
    "model-00001-of-00002.safetensors": os.urandom(700_001),
    "model-00002-of-00002.safetensors": os.urandom(300_000),
    "empty.bin": b"",
}


def test_load_multi_file_model(stack: Stack, shm: Path) -> None:
    info = stack.publish("multi", MULTI)
    done = load(stack.model_url("multi"), shm, "--workers", "3")
    assert done.returncode == 0, done.stderr
    for rel, data in MULTI.items():
        assert (shm / rel).read_bytes() == data, rel
    receipt = json.loads((shm / ".modelseal" / "receipt.json").read_text())
    assert receipt["model_digest"] == info.model_digest
    assert receipt["bytes"] == sum(map(len, MULTI.values()))
    assert receipt["tee"] == "sample"
    assert receipt["insecure_tee"] is True
    assert receipt["token_id"]
    assert (shm / ".modelseal" / "ready").exists()
    assert not [p for p in shm.iterdir() if p.name.startswith(TEMP_PREFIX)]
    summary = json.loads(done.stdout)
    assert summary["model_digest"] == info.model_digest
    # the expected digest (e.g. from init-data) is enforced
    other = shm.parent / "again"
    bad = load(stack.model_url("multi"), other, "--model-digest", "sha256:" + "0" * 64)
    assert bad.returncode == 5
    assert plaintext_files(other) == []


def test_tampered_blob_exit_5_and_no_plaintext(stack: Stack, shm: Path) -> None:
    files = {"a.bin": os.urandom(200_000), "b.bin": os.urandom(50_000)}
    info = stack.publish("tampered", files)
    target = next(f for f in info.files if f.path == "a.bin")
    assert target.sha256 is not None
    objects = list((stack.root / "registry").rglob(target.sha256))
    assert objects, "blob object not found in the registry's store"
    for obj in objects:
        obj.chmod(0o644)
        data = bytearray(obj.read_bytes())
        data[len(data) // 2] ^= 0x01
        obj.write_bytes(bytes(data))
    done = load(stack.model_url("tampered"), shm)
    assert done.returncode == 5, done.stderr
    assert plaintext_files(shm) == []


def test_unknown_model_exit_3(stack: Stack, shm: Path) -> None:
    done = load(stack.model_url("no-such-model"), shm)
    assert done.returncode == 3, done.stderr


def test_policy_denial_exit_4(stack: Stack, shm: Path) -> None:
    stack.publish("tdx-only", {"w.bin": os.urandom(1000)}, policy=TDX_ONLY_POLICY)
    done = load(stack.model_url("tdx-only"), shm)
    assert done.returncode == 4, done.stderr
    assert "denied" in done.stderr
    assert plaintext_files(shm) == []


def test_disk_destination_exit_6_unless_allowed(stack: Stack, disk_dir: Path) -> None:
    stack.publish("disk", {"w.bin": b"weights" * 100})
    done = load(stack.model_url("disk"), disk_dir)
    assert done.returncode == 6, done.stderr
    assert plaintext_files(disk_dir) == []
    done = load(stack.model_url("disk"), disk_dir, "--allow-disk")
    assert done.returncode == 0, done.stderr
    assert (disk_dir / "w.bin").read_bytes() == b"weights" * 100


def test_env_configuration(stack: Stack, shm: Path) -> None:
    stack.publish("envcfg", {"w.bin": b"x" * 5000})
    done = run_cli(
        ["load", "--quiet"],
        env={
            "MODELSEAL_MODEL": stack.model_url("envcfg"),
            "MODELSEAL_DEST": str(shm),
            "MODELSEAL_TEE": "sample",
            "MODELSEAL_KBS_URL": stack.kbs.url,
            "MODELSEAL_WORKERS": "2",
        },
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert (shm / "w.bin").read_bytes() == b"x" * 5000


@pytest.mark.parametrize(
    "args",
    [
        ["--tee", "sample"],  # no --model
        ["--model", "ftp://x/models/m"],
        ["--model", "http://127.0.0.1:9/models/m", "--workers", "0"],
        ["--model", "http://127.0.0.1:9/models/m", "--model-digest", "md5:00"],
        ["--model", "http://127.0.0.1:9/models/m", "--kbs-ca", "/nonexistent.pem"],
    ],
)
def test_bad_configuration_exit_2(args: list[str], shm: Path) -> None:
    from modelseal.cli import main

    with pytest.raises(SystemExit) as info:
        main(["load", "--dest", str(shm), *args])
    assert info.value.code == 2


def _written(dest: Path) -> int:
    """Plaintext bytes written so far into the loader's temp files (tmpfs pages in use)."""
    total = 0
    for tmp in dest.glob(TEMP_PREFIX + "*"):
        for p in tmp.rglob("*"):
            try:
                if p.is_file():
                    total += p.stat().st_blocks * 512
            except FileNotFoundError:
                continue
    return total


BIG = os.urandom(32 << 20)
#: proxy rate: a 16 MiB run (the loader's request size) takes ~1.3 s on the wire, far
#: longer than the 10 ms it takes the test to react once plaintext appears
THROTTLE = 12 << 20


@pytest.fixture(scope="module")
def big_model(stack: Stack) -> str:
    stack.publish("resume", {"weights.bin": BIG}, segment_size=256 << 10)
    return "resume"


def _slow_load(url: str, dest: Path) -> subprocess.Popen[str]:
    argv = [*MODELSEAL, "load", "--model", url, "--dest", str(dest), "--tee", "sample"]
    return subprocess.Popen(
        [*argv, "--workers", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
    )


def _wait_written(proc: subprocess.Popen[str], dest: Path, nbytes: int) -> None:
    deadline = time.monotonic() + 60
    while _written(dest) < nbytes:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "download never started"
        time.sleep(0.01)


def test_sigterm_mid_download_wipes_the_partial_model(
    stack: Stack, big_model: str, shm: Path
) -> None:
    registry_port = int(stack.registry.url.rsplit(":", 1)[1])
    with ThrottlingProxy(("127.0.0.1", registry_port), bytes_per_second=THROTTLE) as proxy:
        proc = _slow_load(stack.model_url(big_model, proxy.url), shm)
        _wait_written(proc, shm, 1)
        proc.terminate()
        _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err  # unwound like Ctrl-C (shell convention)
    assert plaintext_files(shm) == []


def test_registry_killed_mid_download_resumes(stack: Stack, big_model: str, shm: Path) -> None:
    big = BIG
    # a throttling proxy in front of the registry makes the download last long enough
    # for the kill to land in the middle; the registry itself is killed and restarted
    registry_port = int(stack.registry.url.rsplit(":", 1)[1])
    with ThrottlingProxy(("127.0.0.1", registry_port), bytes_per_second=THROTTLE) as proxy:
        proc = _slow_load(stack.model_url(big_model, proxy.url), shm)
        # plaintext appears once the worker's first 16 MiB run is in; the second half of
        # the model is still to come (one worker, 1.3 s per run through the proxy)
        _wait_written(proc, shm, 1)
        stack.registry.kill()
        killed_at = _written(shm)
        time.sleep(0.5)  # the loader meets a dead registry (resets) for a while
        stack.registry.start(timeout=60)
        _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert killed_at < len(big)
    assert (
        hashlib.sha256((shm / "weights.bin").read_bytes()).digest() == hashlib.sha256(big).digest()
    )
    receipt = json.loads((shm / ".modelseal" / "receipt.json").read_text())
    assert receipt["retries"] >= 1
