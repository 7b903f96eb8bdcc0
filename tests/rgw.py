"""A throwaway Ceph RADOS Gateway (a real S3 server) on loopback, for tests.

Debian's Ceph (``radosgw``, ``ceph-mon``, ``ceph-osd``; scripts/system-packages.txt) has no
standalone RGW backend, so this starts a one-node cluster: one monitor, one OSD whose
object store is in memory (``memstore``), and ``radosgw`` with the beast frontend. Cluster
authentication is off (loopback only); S3 requests are signed with a user made by
``radosgw-admin``. It takes 20-30 s to start and about 700 MB of memory, so a test run
starts it once (tests using it share one xdist group, see tests/conftest.py).
"""

from __future__ import annotations

import ctypes
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from modelseal.blobstore.s3 import S3BlobStore
from tests.conftest import free_port

__all__ = ["RgwServer", "available"]

_BINARIES = ("ceph-mon", "ceph-osd", "radosgw", "radosgw-admin", "monmaptool", "ceph")


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the test process dies, however it dies, so
    no daemon outlives a crashed or killed test run."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def available() -> bool:
    return all(shutil.which(b) for b in _BINARIES)


class RgwServer:
    """Start with :meth:`start`; :meth:`stop` kills every daemon and removes the files."""

    def __init__(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="modelseal-rgw-"))
        self.mon_port = free_port()
        self.port = free_port()
        self.fsid = str(uuid.uuid4())
        self.access_key = "modelseal-test"
        self.secret_key = secrets.token_hex(20)
        self.conf = self.base / "ceph.conf"
        self._daemons: list[subprocess.Popen[bytes]] = []

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """Environment for S3 clients (boto3 reads the credentials from here)."""
        return {
            **os.environ,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def _write_conf(self) -> None:
        b = self.base
        for d in ("run", "log", "mon.a", "osd.0", "rgw"):
            (b / d).mkdir()
        self.conf.write_text(
            f"""[global]
fsid = {self.fsid}
mon host = v1:127.0.0.1:{self.mon_port}
mon initial members = a
public network = 127.0.0.0/8
auth cluster required = none
auth service required = none
auth client required = none
osd pool default size = 1
osd pool default min size = 1
mon allow pool size one = true
osd crush chooseleaf type = 0
osd objectstore = memstore
memstore device bytes = 2147483648
run dir = {b}/run
log file = {b}/log/$name.log
admin socket = {b}/run/$name.asok
mon data = {b}/mon.$id
osd data = {b}/osd.$id
osd pool default pg autoscale mode = off
osd pool default pg num = 8
osd pool default pgp num = 8
ms bind ipv6 = false
mon warn on pool no redundancy = false
# the OSD is placed in the CRUSH map by hand below; its own start-up commands for that can
# race the monitor map (a command sent with a zero fsid is refused and the OSD exits)
osd crush update on start = false
osd class update on start = false
[client.rgw]
rgw frontends = beast endpoint=127.0.0.1:{self.port}
rgw data = {b}/rgw
rgw dns name = 127.0.0.1
"""
        )

    def _run(self, *argv: str, timeout: float = 120) -> str:
        result = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "CEPH_CONF": str(self.conf)},
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[:3])} failed: {result.stderr[-2000:]}")
        return result.stdout

    def _until_ok(self, *argv: str, what: str, timeout: float = 120) -> None:
        """Retry ``argv`` until it succeeds: a new monitor refuses commands (EPERM) until
        it has formed its one-member quorum."""
        deadline = time.monotonic() + timeout
        while True:
            self._check_daemons()
            try:
                self._run(*argv, timeout=20)
                return
            except (RuntimeError, subprocess.TimeoutExpired):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{what} did not come up within {timeout:.0f} s") from None
                time.sleep(0.5)

    def _daemon(self, *argv: str) -> None:
        # -f: foreground, so the daemon is our child and dies with stop()
        proc = subprocess.Popen(
            [*argv, "-f", "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        self._daemons.append(proc)

    def start(self) -> RgwServer:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        self._write_conf()
        c = str(self.conf)
        monmap = str(self.base / "monmap")
        self._run(
            "monmaptool", "--create", "--add", "a", f"v1:127.0.0.1:{self.mon_port}",
            "--fsid", self.fsid, monmap,
        )  # fmt: skip
        self._run("ceph-mon", "-c", c, "--mkfs", "-i", "a", "--monmap", monmap)
        self._daemon("ceph-mon", "-i", "a")
        self._until_ok("ceph", "-c", c, "-s", what="the monitor")
        osd_uuid = str(uuid.uuid4())
        self._run("ceph", "-c", c, "osd", "new", osd_uuid, timeout=60)
        self._run("ceph-osd", "-c", c, "-i", "0", "--mkfs", "--osd-uuid", osd_uuid)
        self._run("ceph", "-c", c, "osd", "crush", "add", "osd.0", "1", "host=localhost",
                  "root=default")  # fmt: skip
        self._daemon("ceph-osd", "-i", "0")
        self._daemon("radosgw", "-n", "client.rgw")
        deadline = time.monotonic() + 180
        while True:
            self._check_daemons()
            try:
                if httpx.get(self.endpoint, timeout=2).status_code < 500:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("radosgw did not answer within 180 s")
            time.sleep(0.5)
        self._run(
            "radosgw-admin", "-c", c, "-n", "client.rgw", "user", "create", "--uid=modelseal",
            "--display-name=modelseal", f"--access-key={self.access_key}",
            f"--secret-key={self.secret_key}",
        )  # fmt: skip

    def _check_daemons(self) -> None:
        for proc in self._daemons:
            if proc.poll() is not None:
                logs = "\n".join(
                    f"--- {p.name}\n{p.read_text(errors='replace')[-1500:]}"
                    for p in sorted((self.base / "log").glob("*.log"))
                )
                raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}\n{logs}")

    def stop(self) -> None:
        for proc in reversed(self._daemons):
            if proc.poll() is None:
                with_group = os.getpgid(proc.pid)
                os.killpg(with_group, signal.SIGKILL)
            proc.wait(30)
        self._daemons.clear()
        shutil.rmtree(self.base, ignore_errors=True)


@contextmanager
def rgw_store(
    rgw: RgwServer, monkeypatch: pytest.MonkeyPatch, path: str, query: str = ""
) -> Iterator[S3BlobStore]:
    """An S3 blob store on a fresh bucket of ``rgw``, at ``s3://BUCKET/PATH`` with the
    endpoint and ``query`` (more store URL parameters); the credentials come from the
    environment, as for a registry."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", rgw.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", rgw.secret_key)
    bucket = f"b{os.urandom(4).hex()}"
    params = f"endpoint={rgw.endpoint}" + (f"&{query}" if query else "")
    store = S3BlobStore.from_url(f"s3://{bucket}/{path}?{params}")
    store._client.create_bucket(Bucket=bucket)
    try:
        yield store
    finally:
        store._client.close()
