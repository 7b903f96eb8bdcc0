"""Cross-check with NVIDIA's own local GPU verifier (``nv-local-gpu-verifier`` on PyPI).

That package pins older ``cryptography``/``lxml``/``signxml`` than this project, so it
cannot share the environment: set ``NV_LOCAL_VERIFIER_PYTHON`` to the interpreter of a
virtualenv that has it (``python -m venv v && v/bin/pip install nv-local-gpu-verifier``)
and this test runs NVIDIA's parser and signature check on the real H100 reports (offline)
and compares with modelseal's. Without the variable it is skipped.

Both agree on the sample report (signature, nonce, 64 measurements, driver, FWID). On the
CoCo report NVIDIA's verifier 2.7.3 takes the last 96 bytes as the signature; that report
has one zero byte after it, so its check fails there while modelseal (and Trustee), which
locate the signature by the lengths inside the response, verify it.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from modelseal.tee.nvidia.evidence import build_device, build_evidence
from modelseal.tee.nvidia.verifier import Verifier
from tests.unit.tee.nvidia.conftest import COCO, SAMPLE

PYTHON = os.environ.get("NV_LOCAL_VERIFIER_PYTHON")
pytestmark = pytest.mark.skipif(not PYTHON, reason="NV_LOCAL_VERIFIER_PYTHON is not set")


def test_nvidia_and_modelseal_agree(tmp_path: Path) -> None:
    script = Path(__file__).with_name("nvtrust_side.py")
    args = [str(p) for pair in (SAMPLE, COCO) for p in (pair.report_file, pair.chain_file)]
    done = subprocess.run(
        [str(PYTHON), str(script), *args],
        capture_output=True,
        check=True,
        timeout=120,
        cwd=tmp_path,  # NVIDIA's verifier writes verifier.log into the working directory
    )
    theirs = json.loads(done.stdout.decode().strip().splitlines()[-1])
    for pair, other in zip((SAMPLE, COCO), theirs, strict=True):
        ours = Verifier().verify(
            build_evidence([build_device(pair.report, pair.chain)]),
            expected_report_data=bytes.fromhex(pair.nonce),
            now=time.time(),
        )
        assert other["nonce"] == ours.report_data.hex()
        assert other["measurements"] == [ours.measurements[str(i)] for i in range(1, 65)]
        assert other["driver"] == ours.extra["driver_version"]
        assert other["fwid"] == ours.extra["config"]["fwid"]
    assert theirs[0]["signature_ok"] is True
    assert theirs[1]["signature_ok"] is False  # the trailing byte, see the module docstring
