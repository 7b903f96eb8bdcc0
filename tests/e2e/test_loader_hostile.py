"""``modelseal load`` against a hostile registry and a hostile KBS: bounded memory, exit 5/75.

The loader runs as a subprocess, as an initContainer would; its peak RSS is the kernel's
high-water mark of its own memory map (``VmHWM``, read at exit). Without the header cap and
the bounded reads, the padded registry took a loader to ~370 MB and the streaming KBS to
~860 MB; the bound asserted here is 256 MiB, with the loader's own baseline near 100 MiB.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelseal.format.header import MAX_HEADER_LEN
from modelseal.quickstart.services import MODELSEAL, child_env
from tests.hostile_http import (
    HostileServer,
    answer,
    endless,
    hostile_kbs,
    model_info,
    padded_sealed_blob,
)
from tests.unit.loader.blobserver import BlobServer

pytestmark = pytest.mark.e2e

RSS_BOUND = 256 << 20
PADDED_FILES = 300


#: runs the CLI like ``MODELSEAL`` and, at exit, writes its own ``VmHWM`` (KiB) to the file
#: named by ``HWM_FILE``. Not ``ru_maxrss`` from ``wait4``: Linux carries the high-water
#: mark across ``execve``, so a child forked from a large pytest process (a long session)
#: starts with the parent's resident set as its peak. ``VmHWM`` belongs to the memory map,
#: which ``execve`` replaces, so it measures the loader alone.
_WITH_HWM = (
    "import atexit, os\n"
    "def _hwm():\n"
    "    with open('/proc/self/status', encoding='ascii') as f:\n"
    "        kib = next(line.split()[1] for line in f if line.startswith('VmHWM:'))\n"
    "    with open(os.environ['HWM_FILE'], 'w', encoding='ascii') as out:\n"
    "        out.write(kib)\n"
    "atexit.register(_hwm)\n"
    "from modelseal.cli import main; main()\n"
)


def run_load(url: str, dest: Path, *extra: str) -> tuple[int, str, int]:
    """Run ``modelseal load``; return (exit code, stderr, peak RSS in bytes)."""
    argv = [MODELSEAL[0], "-c", _WITH_HWM, "load", "--model", url, "--dest", str(dest)]
    hwm = dest.parent / f"{dest.name}.hwm"
    done = subprocess.run(
        [*argv, "--tee", "sample", "--allow-disk", *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=child_env({"HWM_FILE": str(hwm)}),
        timeout=300,
        check=False,
    )
    return done.returncode, done.stderr.decode(errors="replace"), int(hwm.read_text()) << 10


@pytest.fixture
def registry() -> Iterator[BlobServer]:
    with BlobServer().running() as server:
        yield server


def publish_info(registry: BlobServer, files: int, kbs_url: str) -> str:
    info = model_info(registry.url, files)
    info["kbs_url"] = kbs_url
    registry.blobs["/models/m"] = json.dumps(info).encode()
    return registry.url + "/models/m"


def test_registry_padding_300_headers_to_1_mib(registry: BlobServer, tmp_path: Path) -> None:
    blob = padded_sealed_blob(MAX_HEADER_LEN)
    for i in range(PADDED_FILES):
        registry.blobs[f"/f{i}"] = blob
    url = publish_info(registry, PADDED_FILES, "http://127.0.0.1:9")
    code, err, rss = run_load(url, tmp_path / "models")
    assert code == 5, err
    assert "the sealed headers of this model exceed 33554432 bytes in total" in err
    assert "Traceback" not in err
    assert rss < RSS_BOUND, f"peak RSS {rss >> 20} MiB"
    assert not any((tmp_path / "models").glob("f*"))


def test_kbs_streaming_800_mb(registry: BlobServer, tmp_path: Path) -> None:
    registry.blobs["/f0"] = padded_sealed_blob(256)
    kbs = hostile_kbs(None)
    kbs.routes["GET"] = endless(800 << 20, sent=kbs.sent)
    with kbs.running():
        url = publish_info(registry, 1, kbs.url)
        code, err, rss = run_load(url, tmp_path / "models")
    assert code == 5, err
    assert "KBS resource: response exceeds the 1048576-byte cap" in err
    assert "Traceback" not in err
    assert rss < RSS_BOUND, f"peak RSS {rss >> 20} MiB"
    assert sum(kbs.sent.values()) < 800 << 20


def test_trickling_registry_meets_the_configured_deadline(
    registry: BlobServer, tmp_path: Path
) -> None:
    """One byte every 20 ms never trips a read timeout; the overall deadline ends it."""
    trickle = HostileServer({"GET /models/m": endless(1 << 20, chunk=1, delay=0.02)})
    with trickle.running():
        code, err, _rss = run_load(trickle.url + "/models/m", tmp_path / "models", "--timeout", "1")
    assert code == 75, err
    assert "no complete answer within 1 s" in err
    assert "Traceback" not in err


def test_deep_model_info_exit_5(tmp_path: Path) -> None:
    deep = b'{"id": "m", "url": "http://x/", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    server = HostileServer({"GET /models/m": answer(200, deep)})
    with server.running():
        code, err, _rss = run_load(server.url + "/models/m", tmp_path / "models")
    assert code == 5, err
    assert "nested too deeply" in err
    assert "Traceback" not in err
