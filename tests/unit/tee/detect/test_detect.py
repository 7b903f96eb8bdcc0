"""TEE detection for ``--tee auto``."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelseal.errors import UnsupportedTee
from modelseal.tee import detect as detect_module
from modelseal.tee.detect import detect


@pytest.mark.parametrize(
    ("device", "kind"), [("tdx_guest", "tdx"), ("sev-guest", "snp"), ("tpmrm0", "tpm")]
)
def test_devices(tmp_path: Path, device: str, kind: str) -> None:
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev" / device).write_bytes(b"")
    assert detect(tmp_path) == kind


def test_tdx_wins_over_tpm(tmp_path: Path) -> None:
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev" / "tpmrm0").write_bytes(b"")
    (tmp_path / "dev" / "tdx_guest").write_bytes(b"")
    assert detect(tmp_path) == "tdx"


@pytest.mark.parametrize(("provider", "kind"), [("tdx_guest", "tdx"), ("sev_guest", "snp")])
def test_configfs_provider(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, provider: str, kind: str
) -> None:
    monkeypatch.setattr(detect_module, "_tsm_provider", lambda _p: provider)
    assert detect(tmp_path) == kind


def test_probe_cleans_up(tmp_path: Path) -> None:
    report = tmp_path / "sys/kernel/config/tsm/report"
    report.mkdir(parents=True)
    with pytest.raises(UnsupportedTee, match="no TEE detected"):
        detect(tmp_path)
    assert list(report.iterdir()) == []


def test_nothing(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedTee, match="pass --tee"):
        detect(tmp_path)
