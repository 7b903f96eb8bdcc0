"""A model larger than a real memory cgroup limit: ``load`` refuses it, ``mount`` serves it.

Everything under test runs inside ONE child memory cgroup (:mod:`tests.memcg`) whose limit
is about 60 % of the model: the loader, the mount and the reader. tmpfs pages are charged
to the cgroup of the process that writes them and cannot be reclaimed, so ``modelseal load``
into a tmpfs (with room to spare on its own) could only end in the OOM killer; it refuses up
front (exit 6) instead, before a byte is written. The mount's plaintext is page cache, which
the kernel reclaims under the limit, so the whole model reads back with every SHA-256 equal
to the original, safetensors maps its last tensor, and the OOM killer never runs.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save as st_save

from modelseal.loader.destination import inspect_destination
from modelseal.protocol.model_info import ModelInfo
from modelseal.quickstart.services import MODELSEAL, child_env
from tests.e2e.test_loader_e2e import Stack, plaintext_files, shm, stack
from tests.e2e.test_mount_e2e import Mount, mounts, pytestmark, start_mount
from tests.memcg import CgroupUnavailable, MemoryCgroup, memory_cgroup
from tests.mount_reader import SCRIPT as READER

__all__ = ["mounts", "pytestmark", "shm", "stack"]  # fixtures and marks shared with mount tests

MIB = 1 << 20
#: the model: one large tensor and a small one stored after it (the "tensor at the end")
BIG = 384 * MIB
rng = np.random.default_rng(1414)
LAST = rng.standard_normal((128, 256), dtype=np.float32).view(np.uint8).reshape(128, 1024)
#: the cgroup's limit: 60 % of the model, in whole MiB (the kernel keeps whole pages)
LIMIT = BIG * 6 // 10 // MIB * MIB


def _model() -> dict[str, bytes]:
    big = np.frombuffer(rng.bytes(BIG - LAST.nbytes), dtype=np.uint8)
    return {
        "config.json": b'{"model_type": "toy"}',
        # uint8 tensors are stored by name: "model.norm" after "model.embed"
        "model.safetensors": st_save({"model.embed": big, "model.norm": LAST}),
    }


def _last_tensor(data: bytes) -> str:
    """The name of the tensor stored last in a safetensors file."""
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    header.pop("__metadata__", None)
    return str(max(header, key=lambda k: header[k]["data_offsets"][0]))


@pytest.fixture(scope="module")
def big(stack: Stack) -> tuple[ModelInfo, dict[str, str]]:
    """The published model and the SHA-256 of each of its files."""
    model = _model()
    assert _last_tensor(model["model.safetensors"]) == "model.norm"
    digests = {rel: hashlib.sha256(data).hexdigest() for rel, data in model.items()}
    info = stack.publish("over-the-limit", model, segment_size=1 * MIB)
    return info, digests


@pytest.fixture
def group() -> Iterator[MemoryCgroup]:
    try:
        with memory_cgroup(LIMIT) as created:
            yield created
    except CgroupUnavailable as exc:
        pytest.skip(f"no writable memory cgroup here: {exc}")


@pytest.mark.slow  # publishing the 384 MiB model is most of its ~15 s
def test_load_refuses_and_mount_serves_under_a_cgroup_limit(
    stack: Stack,
    big: tuple[ModelInfo, dict[str, str]],
    group: MemoryCgroup,
    shm: Path,
    tmp_path: Path,
    mounts: list[Mount],
) -> None:
    info, digests = big
    assert info.model_digest is not None
    free = inspect_destination(shm).free_bytes
    assert free > 2 * BIG, "the tmpfs alone must have room for the model"
    # (a) load into the tmpfs: refused before a byte is written, naming the cgroup limit
    url = stack.model_url("over-the-limit")
    load = [*MODELSEAL, "load", "--model", url, "--dest", str(shm), "--tee", "sample"]
    done = group.run(load, env=child_env())
    assert done.returncode == 6, done.stderr
    assert "memory cgroup" in done.stderr
    assert str(LIMIT) in done.stderr
    assert "modelseal mount" in done.stderr
    assert plaintext_files(shm) == []
    assert group.oom_kills() == 0
    # (b) the mount of the same model, read whole by a reader in the same cgroup
    mount = start_mount(tmp_path, "--model", url, "--tee", "sample", launch=group.command)
    mounts.append(mount)
    assert mount.process.pid in group.pids()
    read = group.run(
        [sys.executable, "-c", READER, str(mount.mountpoint), "model.norm"], env=child_env()
    )
    assert read.returncode == 0, read.stderr
    got = json.loads(read.stdout)
    assert got["sha256"] == digests
    assert got["tensor"] == hashlib.sha256(LAST.tobytes()).hexdigest()
    assert mount.stats()["auth_failures"] == 0
    assert group.oom_kills() == 0
    peak = group.peak()
    assert peak is None or peak <= LIMIT
    assert _vm_hwm(mount.process.pid) <= 256 * MIB  # the mount's own bound, at any model size
    code, _out, err = mount.stop()
    assert code == 0, err
    assert group.oom_kills() == 0


def _vm_hwm(pid: int) -> int:
    """Peak resident set of a process, in bytes (``VmHWM`` of /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for {pid}")
