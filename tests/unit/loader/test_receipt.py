"""Receipt and ready marker: written atomically, receipt first, no secrets."""

from __future__ import annotations

import json
import time
from pathlib import Path

from modelseal.loader.receipt import (
    LoadedFile,
    Receipt,
    Timings,
    clear_ready,
    read_receipt,
)


def _receipt() -> Receipt:
    timings = Timings()
    with timings.step("attest"):
        time.sleep(0.001)
    return Receipt(
        model_id="m",
        version="v1",
        format="modelseal/v1",
        model_digest="sha256:" + "00" * 32,
        model_url="http://r/models/m",
        kbs_url="http://k",
        key_id="models/m/v1",
        tee="sample",
        token_id="tok-1",
        destination="/dev/shm/x",
        files=(LoadedFile("a.bin", 3, 3 + 16 + 100),),
        bytes=3,
        sealed_bytes=119,
        timings=timings.steps,
        retries=0,
        loaded_at=1.0,
        insecure_tee=True,
    )


def test_write_and_read(tmp_path: Path) -> None:
    r = _receipt()
    path = r.write(tmp_path)
    data = json.loads(path.read_text())
    assert data["format_version"] == "modelseal-receipt/1"
    assert data["model_digest"] == r.model_digest
    assert data["files"] == [{"path": "a.bin", "size": 3, "sealed_size": 119}]
    assert data["timings"]["attest"] > 0
    assert data["timings"]["total"] >= data["timings"]["attest"]
    assert (tmp_path / ".modelseal" / "ready").read_text().strip() == r.model_digest
    assert read_receipt(tmp_path) == data
    assert [p.name for p in (tmp_path / ".modelseal").iterdir() if p.name.startswith(".")] == []
    clear_ready(tmp_path)
    assert not (tmp_path / ".modelseal" / "ready").exists()
    assert read_receipt(tmp_path) is None
    clear_ready(tmp_path)
