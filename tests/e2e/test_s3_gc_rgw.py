"""``registry gc`` against a real S3 server (Ceph RGW on loopback, tests/rgw.py).

A real ``registry serve`` is killed with SIGKILL between writing a blob's object and its
ref: its S3 traffic runs through a gate that holds the ref's PUT, so the kill lands
exactly at the commit point. ``modelseal registry gc`` then deletes the orphan it left and
nothing else: every ref names an object, and the model published before still loads
byte-equal. The moto tests of collection (tests/unit/blobstore/test_gc.py) run here too.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import httpx
import pytest

from modelseal.blobstore.s3 import S3BlobStore
from tests.e2e.test_registry_http import start_registry
from tests.rgw import RgwServer, rgw_store
from tests.unit.blobstore.test_gc import (  # the same tests, collected again here
    DEADLINE,
    GRACE,
    test_s3_a_writer_past_its_commit_deadline_never_commits,
    test_s3_collection_during_uploads_loses_nothing_acknowledged,
)

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("rgw")]

__all__ = [
    "test_s3_a_writer_past_its_commit_deadline_never_commits",
    "test_s3_collection_during_uploads_loses_nothing_acknowledged",
]

CLI = [sys.executable, "-c", "from modelseal.cli import main; main()"]


@pytest.fixture
def store(rgw: RgwServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3BlobStore]:
    with rgw_store(rgw, monkeypatch, "reg", f"commit-deadline={DEADLINE}") as s:
        yield s


class RefGate:
    """A TCP relay to the S3 server that, once armed, holds the first request writing a
    ref (``PUT .../meta/...``) forever: the writer has stored its object and waits for the
    commit that never comes."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.armed = threading.Event()
        self.held = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._listener.close()
        for s in self._sockets:
            s.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            self._sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, to_server: bool) -> None:
        try:
            while data := src.recv(1 << 16):
                if to_server and self.armed.is_set() and b"PUT " in data and b"/meta/" in data:
                    self.held.set()
                    return  # never forwarded
                dst.sendall(data)
        except OSError:
            return


def _gc(store_url: str, env: dict[str, str], *args: str) -> dict[str, object]:
    done = subprocess.run(
        [*CLI, "registry", "gc", "--blob-store", store_url, "--json", *args],
        capture_output=True, text=True, env=env, check=False, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def test_gc_after_a_registry_killed_at_the_commit_point(rgw: RgwServer, tmp_path: Path) -> None:
    from modelseal.loader.loader import load_model
    from modelseal.loader.settings import LoaderSettings
    from tests.e2e.test_publish_e2e import SAMPLE_POLICY, _publish, start_kbs

    bucket = f"gc-{os.urandom(4).hex()}"
    s3 = boto3.client(
        "s3",
        endpoint_url=rgw.endpoint,
        aws_access_key_id=rgw.access_key,
        aws_secret_access_key=rgw.secret_key,
        region_name="us-east-1",
    )
    s3.create_bucket(Bucket=bucket)
    env = {**os.environ, **{k: v for k, v in rgw.env().items() if k.startswith("AWS_")}}
    s3_env = {k: v for k, v in env.items() if k.startswith("AWS_")}
    gate = RefGate(("127.0.0.1", rgw.port))
    query = f"commit-deadline={DEADLINE}"
    kbs = start_kbs(tmp_path / "kbs")
    registry = start_registry(
        tmp_path / "registry",
        "--blob-store", f"s3://{bucket}/sealed?endpoint={gate.url}&{query}",
        env=s3_env,
    )  # fmt: skip
    try:
        files = {"model.safetensors": os.urandom(300_000) + b"tail", "config.json": b"{}"}
        src = tmp_path / "model"
        src.mkdir()
        for rel, data in files.items():
            (src / rel).write_bytes(data)
        policy = tmp_path / "policy.json"
        policy.write_text(json.dumps(SAMPLE_POLICY))
        done = _publish(
            registry, kbs.url, kbs.token, src, "--model-id", "gc", "--policy", str(policy),
            staging=tmp_path / "staging",
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        published = {
            o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="sealed/")["Contents"]
        }

        gate.armed.set()
        upload = threading.Thread(
            target=lambda: _quietly(
                lambda: httpx.put(
                    f"{registry.url}/blobs/gc/v9/x.sealed",
                    content=os.urandom(4096),
                    headers=registry.auth(),
                    timeout=30,
                )
            ),
            daemon=True,
        )
        upload.start()
        assert gate.held.wait(30), "the registry never wrote the ref"
        registry.proc.kill()  # SIGKILL between the object and its ref
        registry.proc.wait(10)
        upload.join(30)
        listed = s3.list_objects_v2(Bucket=bucket, Prefix="sealed/")["Contents"]
        orphans = {o["Key"] for o in listed} - published
        assert len(orphans) == 1
        (orphan,) = orphans
        assert orphan.startswith("sealed/objects/")

        store_url = f"s3://{bucket}/sealed?endpoint={rgw.endpoint}&{query}"
        # younger than the grace period: spared, as an upload in flight must be (a long
        # grace here, so a slow machine cannot age the orphan past it before gc looks)
        young = _gc(store_url, env, "--grace", "600")
        assert young["orphans"] == 0
        time.sleep(GRACE + 1.5)  # S3 times have one-second resolution
        dry = _gc(store_url, env, "--grace", str(GRACE), "--dry-run")
        assert (dry["orphans"], dry["orphan_bytes"], dry["dry_run"]) == (1, 4096, True)
        report = _gc(store_url, env, "--grace", str(GRACE))
        assert (report["orphans"], report["orphan_bytes"]) == (1, 4096)
        assert report["referenced"] == len([k for k in published if "/objects/" in k])
        remaining = {
            o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="sealed/")["Contents"]
        }
        assert remaining == published
        for ref in (k for k in remaining if "/meta/" in k):
            meta = json.loads(s3.get_object(Bucket=bucket, Key=ref)["Body"].read())
            assert f"sealed/objects/{meta['object']}" in remaining

        gate.close()
        registry = start_registry(
            tmp_path / "registry",
            "--blob-store", f"s3://{bucket}/sealed?endpoint={rgw.endpoint}&{query}",
            env=s3_env,
        )  # fmt: skip
        dest = tmp_path / "dest"
        load_model(
            LoaderSettings(
                model=f"{registry.url}/models/gc", tee="sample", dest=dest, allow_disk=True
            )
        )
        for rel, data in files.items():
            assert (dest / rel).read_bytes() == data
    finally:
        gate.close()
        registry.stop()
        kbs.stop()


def _quietly(call: object) -> None:
    """Run ``call``; the connection dies with the killed registry."""
    with contextlib.suppress(httpx.HTTPError):
        call()  # type: ignore[operator]
