"""``modelseal quickstart`` (= ``make run``) end to end: exit 0, accuracy, no leftovers."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from modelseal.quickstart.services import MODELSEAL, child_env

# one xdist worker runs them one after another: each checks that /dev/shm and the process
# table hold no quickstart leftovers, which a concurrent quickstart run would put there
pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("quickstart")]
SHM = Path("/dev/shm")


def _ours() -> set[str]:
    return {p.name for p in SHM.glob("modelseal-quickstart-*")} if SHM.is_dir() else set()


@pytest.mark.parametrize(("tee", "tls"), [("sample", False), ("mock-tdx", True)])
def test_quickstart_prints_accuracy_and_cleans_up(tee: str, tls: bool) -> None:
    """With ``--tls`` the digits go through the attested gateway and ``modelseal request``."""
    before = _ours()
    done = subprocess.run(
        [*MODELSEAL, "quickstart", "--tee", tee, *(["--tls"] if tls else [])],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert ("INSECURE" if tee == "sample" else "mock-tdx test root") in done.stdout
    match = re.search(r"ACCURACY: ([0-9.]+) on (\d+) held-out digits", done.stdout)
    assert match is not None, done.stdout
    assert float(match.group(1)) > 0.9
    assert int(match.group(2)) == 450
    inference = "inference over attested TLS" if tls else "inference (unchanged"
    for step in ("train model", "publish", "load (attest", inference):
        assert re.search(re.escape(step) + r".*\s\d+\.\d{3}\s", done.stdout), step
    if tls:
        assert re.search(r"gateway +https://127\.0\.0\.1:\d+ -> http://127", done.stdout)
    assert "cleaned up" in done.stdout
    assert _ours() == before


def test_quickstart_cleans_up_when_interrupted() -> None:
    before = _ours()
    proc = subprocess.Popen(
        [*MODELSEAL, "quickstart"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=child_env(),
    )
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 90
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("-> train") or time.monotonic() > deadline:
            break
    # The whole run takes ~2 s: freeze it first, so SIGTERM lands mid-run, not after it
    proc.send_signal(signal.SIGSTOP)
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGCONT)
    rest, _ = proc.communicate(timeout=60)
    output = "".join(lines) + rest
    assert proc.returncode != 0, output
    assert "cleaned up" in output
    assert _ours() == before
    # the servers it started are gone: no child still holds their data dirs
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True)
    assert not [a for a in ps.stdout.splitlines() if "modelseal-quickstart-" in a]


def test_quickstart_help() -> None:
    done = subprocess.run(
        [*MODELSEAL, "quickstart", "--help"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0
    assert "--tee" in done.stdout
