"""SNP attester over a configfs-tsm entry (the kernel's files emulated in a temp dir)."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelseal.errors import AttestationError, UnsupportedTee
from modelseal.tee.snp.attester import Attester, report_via_entry
from modelseal.tee.snp.evidence import report_bytes_from_json
from tests.unit.tee.snp.test_parsing import _synthetic, _table


def _entry(tmp_path: Path, provider: str = "sev_guest", aux: bytes | None = None) -> Path:
    entry = tmp_path / "entry"
    entry.mkdir()
    (entry / "provider").write_text(provider + "\n")
    (entry / "generation").write_text("3\n")
    (entry / "privlevel").write_text("0\n")
    (entry / "outblob").write_bytes(_synthetic(3))
    if aux is not None:
        (entry / "auxblob").write_bytes(aux)
    return entry


def test_entry_request_writes_inblob_and_reads_blobs(tmp_path: Path) -> None:
    aux = _table([("63da758d-e664-4564-adc5-f4b93be8accd", b"vcek")])
    entry = _entry(tmp_path, aux=aux)
    report, table = report_via_entry(entry, b"\x07" * 64, 1)
    assert (entry / "inblob").read_bytes() == b"\x07" * 64
    assert (entry / "privlevel").read_text() == "1"
    assert report == _synthetic(3)
    assert table == aux


def test_wrong_provider_is_unsupported(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedTee, match="tdx_guest"):
        report_via_entry(_entry(tmp_path, provider="tdx_guest"), bytes(64), 0)


def test_no_interface_is_unsupported(tmp_path: Path) -> None:
    attester = Attester(tsm_root=tmp_path / "none", device=tmp_path / "sev-guest")
    with pytest.raises(UnsupportedTee, match="no SEV-SNP guest interface"):
        attester.evidence(b"x")
    with pytest.raises(AttestationError, match="64 bytes"):
        attester.evidence(bytes(65))
    with pytest.raises(UnsupportedTee):
        Attester(vmpl=4)


def test_evidence_shape_from_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    aux = _table([("63da758d-e664-4564-adc5-f4b93be8accd", b"vcek")])
    entry = _entry(tmp_path, aux=aux)
    import modelseal.tee.snp.attester as mod

    monkeypatch.setattr(
        mod, "report_via_configfs", lambda root, data, vmpl: report_via_entry(entry, data, vmpl)
    )
    evidence = Attester(tsm_root=tmp_path).evidence(b"\x01\x02")
    assert (entry / "inblob").read_bytes() == b"\x01\x02" + bytes(62)
    assert set(evidence) == {"attestation_report", "cert_chain"}
    assert report_bytes_from_json(evidence["attestation_report"]) == _synthetic(3)
    assert evidence["cert_chain"] == [{"cert_type": "VCEK", "data": list(b"vcek")}]


def test_ioctl_abi_constants() -> None:
    """<linux/sev-guest.h>: _IOWR('S', nr, struct snp_guest_request_ioctl) with 32 bytes."""
    import ctypes

    from modelseal.tee.snp import attester as mod

    size = ctypes.sizeof(mod._Request)
    assert size == 32

    def iowr(nr: int) -> int:
        return (3 << 30) | (size << 16) | (ord("S") << 8) | nr

    assert iowr(0) == mod.SNP_GET_REPORT
    assert iowr(2) == mod.SNP_GET_EXT_REPORT


def test_ioctl_device_that_cannot_be_opened(tmp_path: Path) -> None:
    device = tmp_path / "sev-guest"
    device.mkdir()  # exists, but open(O_RDWR) fails
    with pytest.raises(UnsupportedTee, match="cannot open"):
        Attester(tsm_root=tmp_path / "none", device=device).evidence(b"x")
