"""``modelseal mount`` against a real KBS and registry on 127.0.0.1, through the real kernel.

The mount runs as a subprocess exactly as a sidecar would (``/dev/fuse``, libfuse 3), and
is judged by what a reader of the mount point sees: every file's SHA-256, ``mmap`` through
safetensors, EIO (and only EIO) for a range whose sealed bytes were changed, parallel
readers, and a clean unmount on SIGTERM.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save as st_save

from modelseal.format.manifest import SEALED_MANIFEST_NAME, sealed_name
from modelseal.loader.fetch import Fetcher
from modelseal.loader.mount.fs import STATS_XATTR
from modelseal.protocol.model_info import ModelInfo
from modelseal.quickstart.services import MODELSEAL, child_env, run_cli
from tests.e2e.test_loader_e2e import Stack, stack

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None,
        reason="needs /dev/fuse and fuse3 (scripts/system-packages.txt)",
    ),
]

__all__ = ["stack"]  # the module-scoped KBS + registry fixture, shared with the loader tests

SEGMENT = 64 << 10
rng = np.random.default_rng(14)
TENSORS = {
    "embed": rng.standard_normal((256, 512), dtype=np.float32),
    "layers.0.w": rng.standard_normal((512, 512), dtype=np.float32),
    "lm_head": rng.standard_normal((512, 300), dtype=np.float32),
}
MODEL = {
    "config.json": b'{"model_type": "toy", "layers": 1}',
    "model.safetensors": st_save(TENSORS),
    "tokenizer/vocab.txt": b"\n".join(b"tok%d" % i for i in range(20000)),
    "shards/extra.bin": os.urandom(3 * SEGMENT + 123),
    "empty.bin": b"",
}


@dataclass
class Mount:
    process: subprocess.Popen[str]
    mountpoint: Path
    ready_file: Path

    def stop(self) -> tuple[int, str, str]:
        """SIGTERM, wait, and return (exit code, stdout, stderr)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        out, err = self.process.communicate(timeout=60)
        return self.process.returncode, out, err

    def stats(self) -> dict[str, int]:
        return json.loads(os.getxattr(self.mountpoint, STATS_XATTR))


def start_mount(
    root: Path,
    *args: str,
    launch: Callable[[list[str]], list[str]] = list,
    prefix: tuple[str, ...] = (),
) -> Mount:
    """``modelseal mount`` of ``args`` at ``root/mnt``, returned once its ready file exists;
    ``prefix`` is a command that runs it (e.g. as another user), ``launch`` may wrap the
    whole command (e.g. to start it inside a memory cgroup)."""
    mountpoint = root / "mnt"
    mountpoint.mkdir(parents=True, exist_ok=True)
    ready = root / "run" / "ready.json"
    argv = [*MODELSEAL, "mount", "--mountpoint", str(mountpoint), "--ready-file", str(ready)]
    process = subprocess.Popen(
        launch([*prefix, *argv, *args]),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    mount = Mount(process, mountpoint, ready)
    deadline = time.monotonic() + 60
    while not ready.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            code, _out, err = mount.stop()
            raise AssertionError(f"mount did not become ready (exit {code}): {err}")
        time.sleep(0.05)
    return mount


@pytest.fixture
def mounts(tmp_path: Path) -> Iterator[list[Mount]]:
    """Mounts a test started; any still running is stopped and must leave no mount."""
    started: list[Mount] = []
    yield started
    for mount in started:
        mount.stop()
        if os.path.ismount(mount.mountpoint):
            subprocess.run(["fusermount3", "-u", "-z", str(mount.mountpoint)], check=False)
            raise AssertionError(f"{mount.mountpoint} still mounted after SIGTERM")


@pytest.fixture(scope="module")
def published(stack: Stack) -> ModelInfo:
    return stack.publish("mounted", MODEL, segment_size=SEGMENT)


def model_args(stack: Stack) -> list[str]:
    return ["--model", stack.model_url("mounted"), "--tee", "sample"]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_every_file_reads_back_and_safetensors_maps_it(
    stack: Stack, published: ModelInfo, tmp_path: Path, mounts: list[Mount]
) -> None:
    mount = start_mount(tmp_path, *model_args(stack))
    mounts.append(mount)
    ready = json.loads(mount.ready_file.read_text())
    assert ready["model_digest"] == published.model_digest
    assert ready["files"] == len(MODEL)
    assert {"model_info", "headers", "attest_key_release", "manifest"} <= set(ready["timings"])
    listed = sorted(
        str(p.relative_to(mount.mountpoint)) for p in mount.mountpoint.rglob("*") if p.is_file()
    )
    assert listed == sorted(MODEL)
    for rel, data in MODEL.items():
        assert sha256(mount.mountpoint / rel) == hashlib.sha256(data).hexdigest(), rel
        assert (mount.mountpoint / rel).stat().st_size == len(data)
    # safetensors maps the file (mmap through the kernel's page cache of the mount)
    with safe_open(mount.mountpoint / "model.safetensors", framework="np") as f:
        assert sorted(f.keys()) == sorted(TENSORS)
        for name, tensor in TENSORS.items():
            np.testing.assert_array_equal(f.get_tensor(name), tensor)
    # read-only: writes and new files are refused
    with pytest.raises(OSError) as refused:
        (mount.mountpoint / "config.json").write_bytes(b"x")
    assert refused.value.errno in (errno.EROFS, errno.EACCES)
    with pytest.raises(OSError):
        (mount.mountpoint / "new.bin").write_bytes(b"x")
    assert os.getxattr(mount.mountpoint, "user.modelseal.model_digest").decode() == (
        published.model_digest
    )
    assert mount.stats()["auth_failures"] == 0
    code, out, err = mount.stop()
    assert code == 0, err
    assert "Traceback" not in err
    assert "invalid" not in err  # libfuse's thread-count notice stays away
    assert json.loads(out)["unmounted"] is True
    assert not os.path.ismount(mount.mountpoint)
    assert not mount.ready_file.exists()


def test_parallel_readers_get_the_right_bytes(
    stack: Stack, published: ModelInfo, tmp_path: Path, mounts: list[Mount]
) -> None:
    mount = start_mount(tmp_path, *model_args(stack), "--cache-mib", "16")
    mounts.append(mount)
    names = [n for n, d in MODEL.items() if len(d) > SEGMENT]

    def reader(seed: int) -> int:
        pick = random.Random(seed)
        checked = 0
        for _ in range(40):
            name = pick.choice(names)
            data = MODEL[name]
            offset = pick.randrange(len(data))
            size = pick.randrange(1, 3 * SEGMENT)
            with open(mount.mountpoint / name, "rb", buffering=0) as f:
                got = os.pread(f.fileno(), size, offset)
            assert got == data[offset : offset + size], (name, offset, size)
            checked += len(got)
        return checked

    with ThreadPoolExecutor(8) as pool:
        assert all(n > 0 for n in pool.map(reader, range(8)))
    code, _out, err = mount.stop()
    assert code == 0, err


def download_sealed(info: ModelInfo, into: Path) -> None:
    """The sealed files of a published model, laid out as `modelseal seal` writes them."""
    with Fetcher() as fetcher:
        blobs = [(sealed_name(f.path), f.url, f.sealed_size) for f in info.files]
        assert info.manifest_url is not None
        blobs.append((SEALED_MANIFEST_NAME, info.manifest_url, 0))
        for name, url, _size in blobs:
            (into / name).parent.mkdir(parents=True, exist_ok=True)
            data, total = fetcher.read_head(url, 1 << 30)
            assert len(data) == total
            (into / name).write_bytes(data)


def flip(blob: Path, segment: int, size: int) -> None:
    """Change one byte of ``segment``'s ciphertext in a sealed file of ``size`` plaintext
    bytes (whole segments of SEGMENT)."""
    blob.chmod(0o644)
    raw = bytearray(blob.read_bytes())
    first_segment_at = len(raw) - (size // SEGMENT) * (SEGMENT + 16)
    raw[first_segment_at + segment * (SEGMENT + 16) + 100] ^= 0x01
    blob.write_bytes(bytes(raw))


@pytest.mark.parametrize("where", ["registry", "sealed-dir"])
def test_flipped_byte_gives_eio_for_its_range_only(
    stack: Stack, tmp_path: Path, mounts: list[Mount], where: str
) -> None:
    data = os.urandom(6 * SEGMENT)
    model_id = f"flipped-{where}"
    info = stack.publish(model_id, {"w.bin": data}, segment_size=SEGMENT)
    bad_segment = 3
    if where == "registry":  # the blob the registry serves with ranged GETs
        (entry,) = info.files
        assert entry.sha256 is not None
        blobs = list((stack.root / "registry").rglob(entry.sha256))
        assert blobs, "blob object not found in the registry's store"
        for blob in blobs:
            flip(blob, bad_segment, len(data))
        args = ["--model", stack.model_url(model_id)]
    else:  # a local copy of the sealed model, read with pread
        sealed = tmp_path / "sealed"
        download_sealed(info, sealed)
        flip(sealed / "w.bin.sealed", bad_segment, len(data))
        args = ["--sealed", str(sealed), "--kbs-url", stack.kbs.url]
    ops = ["--metrics-port", "0", "--log-format", "json"]
    mount = start_mount(tmp_path, *args, "--tee", "sample", *ops)
    mounts.append(mount)
    path = mount.mountpoint / "w.bin"
    bad_lo, bad_hi = bad_segment * SEGMENT, (bad_segment + 1) * SEGMENT
    with open(path, "rb", buffering=0) as f:
        fd = f.fileno()
        with pytest.raises(OSError) as failed:
            os.pread(fd, 10, bad_lo + 5)
        assert failed.value.errno == errno.EIO
        # the other segments read, and again after the failure
        assert os.pread(fd, SEGMENT, 0) == data[:SEGMENT]
        assert os.pread(fd, 2 * SEGMENT, bad_hi) == data[bad_hi : bad_hi + 2 * SEGMENT]
        with pytest.raises(OSError) as again:
            os.pread(fd, 1, bad_hi - 1)
        assert again.value.errno == errno.EIO
    # a whole-file reader gets authenticated bytes up to the bad segment, then EIO
    got = io.BytesIO()
    with open(path, "rb", buffering=0) as f, pytest.raises(OSError) as whole:
        shutil.copyfileobj(f, got, SEGMENT // 2)
    assert whole.value.errno == errno.EIO
    assert got.getvalue() == data[: len(got.getvalue())]
    assert len(got.getvalue()) <= bad_lo
    stats = mount.stats()
    assert stats["auth_failures"] >= 2
    # the same counters on the metrics endpoint (its kernel-chosen port is in the marker)
    scraped = httpx.get(json.loads(mount.ready_file.read_text())["metrics_url"], timeout=10)
    assert scraped.status_code == 200
    series = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in scraped.text.splitlines()
        if line.startswith("modelseal_mount_")
    }
    assert series["modelseal_mount_authentication_failures_total"] == stats["auth_failures"]
    assert series["modelseal_mount_reads_total"] == stats["reads"]
    assert series["modelseal_mount_fetched_bytes_total"] == stats["sealed_bytes_fetched"]
    assert "process_resident_memory_bytes" in scraped.text
    code, _out, err = mount.stop()
    assert code == 0
    # one JSON object per log line, as for the servers
    logged = [json.loads(line) for line in err.splitlines() if line.strip()]
    assert any("failed authentication" in entry["message"] for entry in logged), logged


def last_byte_changed(info: ModelInfo) -> str:
    digest = info.model_digest
    assert digest is not None
    return digest[:-1] + ("0" if digest[-1] != "0" else "1")


def test_wrong_expected_digest_exit_5_and_nothing_mounted(
    stack: Stack, published: ModelInfo, tmp_path: Path
) -> None:
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    bad_digest = last_byte_changed(published)
    done = run_cli(
        ["mount", *model_args(stack), "--mountpoint", str(mountpoint), "--model-digest", bad_digest]
    )
    assert done.returncode == 5, done.stderr
    assert not os.path.ismount(mountpoint)


def test_metrics_port_in_use_exit_2_and_nothing_mounted(
    stack: Stack, published: ModelInfo, tmp_path: Path
) -> None:
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        # a model URL nothing answers: the port is checked first, or this would exit 75
        unreachable = ["--model", "http://127.0.0.1:1/v1/models/m", "--retries", "1"]
        argv = ["mount", *unreachable, "--tee", "sample", "--mountpoint", str(mountpoint)]
        done = run_cli([*argv, "--metrics-port", port])
    assert done.returncode == 2, done.stderr
    assert "cannot serve metrics" in done.stderr
    assert "Traceback" not in done.stderr
    assert not os.path.ismount(mountpoint)


def test_mountpoint_must_be_an_empty_directory(
    stack: Stack, published: ModelInfo, tmp_path: Path
) -> None:
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    (mountpoint / "something").write_text("x")
    done = run_cli(["mount", *model_args(stack), "--mountpoint", str(mountpoint)])
    assert done.returncode == 2, done.stderr
    assert "not empty" in done.stderr


def test_sigterm_unmounts_and_open_files_read_until_closed(
    stack: Stack, published: ModelInfo, tmp_path: Path, mounts: list[Mount]
) -> None:
    mount = start_mount(tmp_path, *model_args(stack))
    mounts.append(mount)
    data = MODEL["shards/extra.bin"]
    with open(mount.mountpoint / "shards" / "extra.bin", "rb", buffering=0) as f:
        assert os.pread(f.fileno(), 100, 0) == data[:100]
        mount.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        while os.path.ismount(mount.mountpoint):
            assert time.monotonic() < deadline, "SIGTERM did not unmount"
            time.sleep(0.05)
        # gone for new opens, still served for the open file (lazy unmount)
        assert not (mount.mountpoint / "config.json").exists()
        assert os.pread(f.fileno(), 1000, len(data) - 1000) == data[-1000:]
        # a second SIGTERM (an impatient supervisor) changes nothing
        mount.process.send_signal(signal.SIGTERM)
        assert os.pread(f.fileno(), 10, 0) == data[:10]
        assert mount.process.poll() is None
    code, out, err = mount.stop()  # exits once the last file is closed
    assert code == 0, err
    assert json.loads(out)["unmounted"] is True
    assert not mount.ready_file.exists()


def run_background(args: list[str], log: Path) -> subprocess.CompletedProcess[str]:
    """``modelseal mount --background``: its child keeps the stderr it was given, so that
    goes to a file (a pipe would stay open as long as the mount runs)."""
    with log.open("w") as err:
        return subprocess.run(
            [*MODELSEAL, "mount", *args, "--background"],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=child_env(),
            timeout=120,
            check=False,
        )


def test_background_returns_once_the_mount_serves(
    stack: Stack, published: ModelInfo, tmp_path: Path
) -> None:
    mountpoint, ready, log = tmp_path / "mnt", tmp_path / "ready.json", tmp_path / "log"
    mountpoint.mkdir()
    done = run_background(
        [*model_args(stack), "--mountpoint", str(mountpoint), "--ready-file", str(ready)], log
    )
    assert done.returncode == 0, log.read_text()
    pid = json.loads(done.stdout)["pid"]
    try:
        assert os.path.ismount(mountpoint)
        assert json.loads(ready.read_text())["pid"] == pid
        assert (mountpoint / "config.json").read_bytes() == MODEL["config.json"]
    finally:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while os.path.ismount(mountpoint) or ready.exists():
            assert time.monotonic() < deadline, "the background mount did not stop"
            time.sleep(0.05)
    assert "SIGTERM received" in log.read_text()


def test_background_reports_the_childs_failure(stack: Stack, tmp_path: Path) -> None:
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    model = ["--model", stack.model_url("no-such-model"), "--tee", "sample"]
    done = run_background(
        [*model, "--mountpoint", str(mountpoint), "--ready-file", str(tmp_path / "r")],
        tmp_path / "log",
    )
    assert done.returncode == 3, (tmp_path / "log").read_text()
    assert not os.path.ismount(mountpoint)


def test_sigterm_unmounts_after_the_mount_point_moved(
    stack: Stack, published: ModelInfo, tmp_path: Path, mounts: list[Mount]
) -> None:
    mount = start_mount(tmp_path / "a", *model_args(stack))
    mounts.append(mount)
    (tmp_path / "a").rename(tmp_path / "b")  # e.g. a temporary directory cleaned up
    moved = tmp_path / "b" / "mnt"
    assert os.path.ismount(moved)
    code, _out, err = mount.stop()
    assert code == 0, err
    assert not os.path.ismount(moved)


def _connection_gone(path: Path) -> bool:
    try:
        os.statvfs(path)  # never answered from the kernel's caches
    except OSError as exc:
        return exc.errno == errno.ENOTCONN
    return False


def test_a_mount_killed_with_sigkill_is_replaced_by_the_next_one(
    stack: Stack, published: ModelInfo, tmp_path: Path, mounts: list[Mount]
) -> None:
    """``kill -9`` (or the OOM killer) leaves the mount point dead (ENOTCONN) with no
    unmount: a restarted sidecar unmounts our dead mount and serves again."""
    first = start_mount(tmp_path, *model_args(stack))
    mounts.append(first)
    first.process.kill()
    first.process.wait(timeout=30)
    assert _connection_gone(first.mountpoint)
    first.ready_file.unlink()  # as a restarted container starts without it
    second = start_mount(tmp_path, *model_args(stack))
    mounts.append(second)
    for name, data in MODEL.items():
        assert (second.mountpoint / name).read_bytes() == data
    code, _out, err = second.stop()
    assert code == 0, err
    assert "a modelseal mount whose process is gone" in err
    assert not os.path.ismount(second.mountpoint)


_OTHER_FS = """
import sys
import mfusepy
mfusepy.FUSE(mfusepy.Operations(), sys.argv[1], foreground=True, fsname="other", subtype="other")
"""


def test_a_dead_mount_of_another_filesystem_is_left_alone(
    stack: Stack, published: ModelInfo, tmp_path: Path
) -> None:
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    env = {**child_env(), "FUSE_LIBRARY_PATH": "libfuse3.so.3"}
    other = subprocess.Popen([sys.executable, "-c", _OTHER_FS, str(mountpoint)], env=env)
    try:
        deadline = time.monotonic() + 30
        while not os.path.ismount(mountpoint):
            assert other.poll() is None, "the other filesystem did not mount"
            assert time.monotonic() < deadline, "the other filesystem did not mount"
            time.sleep(0.05)
        other.kill()
        other.wait(timeout=30)
        assert _connection_gone(mountpoint)
        done = run_cli(["mount", *model_args(stack), "--mountpoint", str(mountpoint)])
        assert done.returncode == 2, done.stderr
        assert "not a modelseal mount" in done.stderr
        assert _connection_gone(mountpoint)  # still there: not ours to remove
    finally:
        other.kill()
        subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], check=False)


CAP_SYS_ADMIN = 21


def _unprivileged_uid() -> int:
    """An unprivileged user of this machine standing in for the image's (10001, created by
    deploy/examples/Dockerfile.mount): fusermount3 needs the user in /etc/passwd."""
    try:
        return pwd.getpwnam("nobody").pw_uid
    except KeyError:
        return -1


IMAGE_UID = _unprivileged_uid()


def _as_image_user(*, bounding: str) -> tuple[str, ...]:
    """Run as the image's user with no capability of its own and ``bounding`` as the
    bounding set (what the container grants a setuid program). The interpreter of this
    machine lives under /root, so CAP_DAC_READ_SEARCH (ambient) lets that user read it:
    the image installs Python where every user may."""
    return (
        "setpriv", "--reuid", str(IMAGE_UID), "--regid", str(IMAGE_UID), "--clear-groups",
        "--inh-caps", "-all,+dac_read_search", "--ambient-caps", "+dac_read_search",
        "--bounding-set", f"-all,+dac_read_search{bounding}",
    )  # fmt: skip


def _mounted(mountpoint: Path) -> bool:
    """From /proc/self/mounts: stat() of another user's FUSE mount is refused to root."""
    with open("/proc/self/mounts", encoding="utf-8") as f:
        return any(line.split()[1] == str(mountpoint) for line in f)


def _fusermount_is_setuid_root() -> bool:
    tool = shutil.which("fusermount3")
    if tool is None or shutil.which("setpriv") is None:
        return False
    info = os.stat(tool)
    return info.st_uid == 0 and bool(info.st_mode & 0o4000)


@pytest.mark.skipif(
    os.geteuid() != 0 or IMAGE_UID < 0 or not _fusermount_is_setuid_root(),
    reason="needs root (to become 'nobody') and fuse3's setuid fusermount3",
)
def test_the_image_user_mounts_through_setuid_fusermount3_without_sys_admin(
    stack: Stack, published: ModelInfo
) -> None:
    """The design of Dockerfile.mount: the mount process runs as an unprivileged user that
    holds no capability; only fuse3's setuid ``fusermount3`` mounts and unmounts (it gets
    CAP_SYS_ADMIN from the container's bounding set). Without CAP_SYS_ADMIN in the
    bounding set even that is refused, and the mount exits 2 with nothing mounted."""
    root = Path(tempfile.mkdtemp(prefix="ms-image-user-"))  # pytest's tmp dirs are 0700
    try:
        root.chmod(0o755)
        for sub in ("mnt", "run"):
            (root / sub).mkdir()
            os.chown(root / sub, IMAGE_UID, IMAGE_UID)
        as_user = _as_image_user(bounding=",+sys_admin")
        mount = start_mount(root, *model_args(stack), "--cache-mib", "16", prefix=as_user)
        try:
            status = Path(f"/proc/{mount.process.pid}/status").read_text()
            fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
            assert fields["Uid"].split()[:2] == [str(IMAGE_UID)] * 2
            assert not int(fields["CapEff"], 16) & (1 << CAP_SYS_ADMIN)
            assert _mounted(mount.mountpoint)
            for rel in ("config.json", "model.safetensors", "shards/extra.bin"):
                read = subprocess.run(
                    [*as_user, "cat", str(mount.mountpoint / rel)], capture_output=True,
                    check=True,
                )  # fmt: skip
                assert read.stdout == MODEL[rel]
        finally:
            code, out, err = mount.stop()
        assert code == 0, err
        assert json.loads(out)["unmounted"] is True
        assert not _mounted(mount.mountpoint)

        # the same user in a container that withholds CAP_SYS_ADMIN: a clear refusal
        refused = subprocess.run(
            [*_as_image_user(bounding=""), *MODELSEAL, "mount", *model_args(stack),
             "--mountpoint", str(root / "mnt")],
            capture_output=True, text=True, env=child_env(), timeout=120, check=False,
        )  # fmt: skip
        assert refused.returncode == 2, refused.stderr
        assert "fusermount3" in refused.stderr
        assert not _mounted(root / "mnt")
    finally:
        if _mounted(root / "mnt"):
            subprocess.run(["fusermount3", "-u", "-z", str(root / "mnt")], check=False)
        shutil.rmtree(root, ignore_errors=True)
