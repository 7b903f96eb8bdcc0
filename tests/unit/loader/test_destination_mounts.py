"""The memory-backed check against real mounts: nested tmpfs, disk bind mounts, symlinks.

Each case runs in a private mount namespace (``unshare -m``; needs CAP_SYS_ADMIN, skipped
otherwise), both with ``statfs(2)`` and with the ``/proc/self/mountinfo`` fallback alone,
so neither path can be fooled by a bind mount or a mount below another one.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelseal.loader import destination as d

SCRIPT = r"""
import json, os, subprocess, sys
from pathlib import Path
from modelseal.loader import destination as d

disk, shm = Path(sys.argv[1]), Path(sys.argv[2])
def sh(*args): subprocess.run(args, check=True)
# a tmpfs mounted below a disk directory (Kubernetes emptyDir medium: Memory)
(disk / "mem").mkdir()
sh("mount", "-t", "tmpfs", "none", str(disk / "mem"))
# a disk directory bind-mounted into /dev/shm, and one over a subdirectory of it
(disk / "plain").mkdir()
(shm / "bound").mkdir()
sh("mount", "--bind", str(disk / "plain"), str(shm / "bound"))
(shm / "nested").mkdir()
(shm / "nested" / "inner").mkdir()
sh("mount", "--bind", str(disk / "plain"), str(shm / "nested" / "inner"))
# a symlink in /dev/shm that points to disk
(shm / "link").symlink_to(disk / "plain")
cases = {
    "tmpfs below disk": disk / "mem" / "models",
    "disk bound into shm": shm / "bound",
    "below a disk bind mount": shm / "bound" / "models",
    "disk mounted below shm dir": shm / "nested" / "inner" / "models",
    "shm dir around that mount": shm / "nested" / "models",
    "symlink to disk": shm / "link" / "models",
}
out = {}
for mode in ("statfs", "mountinfo"):
    if mode == "mountinfo":
        d.statfs_type = lambda path: None
    out[mode] = {k: d.inspect_destination(p).memory_backed for k, p in cases.items()}
print(json.dumps(out))
"""

EXPECTED = {
    "tmpfs below disk": True,
    "disk bound into shm": False,
    "below a disk bind mount": False,
    "disk mounted below shm dir": False,
    "shm dir around that mount": True,
    "symlink to disk": False,
}


def _can_unshare() -> bool:
    if not shutil.which("unshare"):
        return False
    done = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "true"], capture_output=True, check=False
    )
    return done.returncode == 0


@pytest.fixture
def dirs() -> Iterator[tuple[Path, Path]]:
    shm = Path("/dev/shm")
    here = Path(__file__).resolve().parent
    if d.statfs_type(shm) != "tmpfs" or d.inspect_destination(here).memory_backed:
        pytest.skip("needs /dev/shm on tmpfs and a disk-backed source tree")
    if not _can_unshare():
        pytest.skip("no private mount namespace here (unshare -m needs CAP_SYS_ADMIN)")
    disk = Path(tempfile.mkdtemp(prefix=".ms-mounts-", dir=here))
    mem = Path(tempfile.mkdtemp(prefix="ms-mounts-", dir=shm))
    try:
        yield disk, mem
    finally:
        shutil.rmtree(disk, ignore_errors=True)
        shutil.rmtree(mem, ignore_errors=True)


def test_real_mounts(dirs: tuple[Path, Path]) -> None:
    disk, shm = dirs
    namespace = ["unshare", "-m", "--propagation", "private"]
    done = subprocess.run(
        [*namespace, sys.executable, "-c", SCRIPT, str(disk), str(shm)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["statfs"] == EXPECTED
    assert result["mountinfo"] == EXPECTED
