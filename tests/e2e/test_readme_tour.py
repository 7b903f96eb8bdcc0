"""The README's CLI tour, run exactly as written (real KBS, registry, loader, vectors).

Only what must differ between test runs is replaced: the two ports (free ones, so parallel
runs do not collide) and the /dev/shm destinations (unique names). The tour runs in a
scratch directory that links the repository's ``deploy``, ``tests`` and ``.venv``, so it
leaves nothing in the clone.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def tour_block() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## A tour of the CLI", 1)[1]
    match = re.search(r"```bash\n(.*?)```", section, re.S)
    assert match is not None, "README has no bash block in its tour"
    return match.group(1)


def test_every_tour_command_runs(tmp_path: Path) -> None:
    script = tour_block()
    assert "8080" in script
    assert "8090" in script
    assert "/dev/shm/demo" in script
    kbs_port, registry_port = free_port(), free_port()
    tag = uuid.uuid4().hex[:8]
    unsealed, loaded = Path(f"/dev/shm/tour-unsealed-{tag}"), Path(f"/dev/shm/tour-{tag}")
    script = (
        script.replace("8080", str(kbs_port))
        .replace("8090", str(registry_port))
        .replace("/dev/shm/demo-unsealed", str(unsealed))
        .replace("/dev/shm/demo", str(loaded))
    )
    work = tmp_path / "tour"
    work.mkdir()
    for name in ("deploy", "tests"):
        (work / name).symlink_to(ROOT / name)
    (work / ".venv").symlink_to(Path(sys.executable).parent.parent)
    runner = work / "tour.sh"
    runner.write_text(
        "set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null; wait' EXIT\n" + script,
        encoding="utf-8",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELSEAL_")}
    try:
        done = subprocess.run(
            ["bash", str(runner)], cwd=work, env=env, capture_output=True, text=True, timeout=240
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        model = (work / "model" / "model.safetensors").read_bytes()
        assert (unsealed / "model.safetensors").read_bytes() == model
        assert (loaded / "model.safetensors").read_bytes() == model
        # the replay's RTMRs and the quote's claims, as printed
        assert json.dumps("UpToDate") in done.stdout
        assert '"tee": "tdx"' in done.stdout
        assert '"rtmr3"' in done.stdout
    finally:
        shutil.rmtree(unsealed, ignore_errors=True)
        shutil.rmtree(loaded, ignore_errors=True)
