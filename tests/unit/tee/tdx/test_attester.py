"""TDX attester: configfs-tsm protocol (generation check, cleanup) and the QGS vsock codec."""

from __future__ import annotations

import socket
import struct
import threading
from pathlib import Path

import pytest

from modelseal._internal.encoding import b64_decode
from modelseal.errors import AttestationError, UnsupportedTee
from modelseal.tee.eventlog.aael import END_FLAG, aael_entry, log_end
from modelseal.tee.eventlog.components import extract_components
from modelseal.tee.eventlog.tcg import ALG_SHA384, parse_event_log
from modelseal.tee.mock_tdx.attester import boot_event_log
from modelseal.tee.tdx.attester import (
    TDX_CMD_GET_REPORT0,
    Attester,
    ConfigfsTsm,
    qgs_get_quote,
    qgs_port,
    qgs_request,
)

QUOTE = b"\x04\x00\x02\x00" + b"Q" * 100


class FakeKernelTsm(ConfigfsTsm):
    """Plays the kernel's part: attribute files appear on mkdir, outblob after inblob."""

    def __init__(self, base: Path, *, provider: str = "tdx_guest", step: int = 1) -> None:
        super().__init__(base)
        self.fake_provider = provider
        self.step = step
        self.seen: list[bytes] = []
        base.mkdir(exist_ok=True)
        original_mkdir = Path.mkdir

        def mkdir(
            path: Path, mode: int = 0o777, parents: bool = False, exist_ok: bool = False
        ) -> None:
            original_mkdir(path, mode, parents, exist_ok)
            if path.parent == base:
                (path / "provider").write_text(self.fake_provider + "\n")
                (path / "generation").write_text("0\n")

        self._patch = mkdir

    def _produce(self, entry: Path) -> None:
        self.seen.append((entry / "inblob").read_bytes())
        (entry / "outblob").write_bytes(QUOTE)
        (entry / "generation").write_text(f"{self.step}\n")


@pytest.fixture
def fake_tsm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeKernelTsm:
    tsm = FakeKernelTsm(tmp_path / "report")
    monkeypatch.setattr(Path, "mkdir", tsm._patch)
    return tsm


def test_configfs_quote(fake_tsm: FakeKernelTsm) -> None:
    assert fake_tsm.quote(b"\x01" * 48) == QUOTE
    assert fake_tsm.seen == [b"\x01" * 48 + bytes(16)]
    assert list(fake_tsm.base.iterdir()) == []  # entry removed


def test_configfs_race_detected(fake_tsm: FakeKernelTsm) -> None:
    fake_tsm.step = 2  # someone else wrote to the entry too
    with pytest.raises(AttestationError, match="raced"):
        fake_tsm.quote(b"x")
    assert len(fake_tsm.seen) == 3
    assert list(fake_tsm.base.iterdir()) == []


def test_configfs_wrong_provider(fake_tsm: FakeKernelTsm) -> None:
    fake_tsm.fake_provider = "sev_guest"
    with pytest.raises(UnsupportedTee, match="sev_guest"):
        fake_tsm.quote(b"x")


def test_attester_evidence_with_ccel(fake_tsm: FakeKernelTsm, tmp_path: Path) -> None:
    ccel = tmp_path / "CCEL"
    ccel.write_bytes(b"log")
    attester = Attester(tsm_dir=fake_tsm.base, ccel_path=ccel)
    attester.tsm = fake_tsm
    ev = attester.evidence(b"\x02" * 64)
    assert b64_decode(ev["quote"]) == QUOTE
    assert b64_decode(ev["cc_eventlog"]) == b"log"
    assert ev["aa_eventlog"] is None


def test_no_tdx_interface(tmp_path: Path) -> None:
    attester = Attester(tsm_dir=tmp_path / "none", device=tmp_path / "tdx_guest")
    with pytest.raises(UnsupportedTee, match="no TDX guest interface"):
        attester.quote(b"")
    (tmp_path / "tdx_guest").write_bytes(b"")
    attester = Attester(
        tsm_dir=tmp_path / "none", device=tmp_path / "tdx_guest", qgs_conf=tmp_path / "conf"
    )
    with pytest.raises(UnsupportedTee, match="QGS vsock port"):
        attester.quote(b"")


def test_ioctl_number() -> None:
    # _IOWR('T', 1, 1088) as in <uapi/linux/tdx-guest.h>
    assert TDX_CMD_GET_REPORT0 == 0xC4405401


def test_qgs_port(tmp_path: Path) -> None:
    conf = tmp_path / "tdx-attest.conf"
    conf.write_text("# comment\nport=4050\n")
    assert qgs_port(conf) == 4050
    assert qgs_port(tmp_path / "missing") is None


def _fake_qgs(sock: socket.socket, error: int = 0) -> None:
    (length,) = struct.unpack(">I", sock.recv(4))
    request = b""
    while len(request) < length:
        request += sock.recv(length - len(request))
    major, _minor, mtype, size, _err = struct.unpack_from("<HHIII", request)
    assert (major, mtype, size) == (1, 0, length)
    report_size, id_size = struct.unpack_from("<II", request, 16)
    assert (report_size, id_size) == (1024, 0)
    body = struct.pack("<II", 0, len(QUOTE)) + QUOTE
    msg = struct.pack("<HHIII", 1, 0, 1, 16 + len(body), error) + body
    sock.sendall(struct.pack(">I", len(msg)) + msg)


@pytest.mark.parametrize("error", [0, 0x11])
def test_qgs_roundtrip(error: int) -> None:
    a, b = socket.socketpair()
    with a, b:
        server = threading.Thread(target=_fake_qgs, args=(b, error))
        server.start()
        if error:
            with pytest.raises(AttestationError, match="0x11"):
                qgs_get_quote(a, bytes(1024))
        else:
            assert qgs_get_quote(a, bytes(1024)) == QUOTE
        server.join(5)


def test_qgs_request_rejects_bad_report() -> None:
    with pytest.raises(AttestationError):
        qgs_request(b"short")


def _aael(tmp_path: Path, *texts: str) -> Path:
    path = tmp_path / "aael"
    path.write_bytes(b"".join(aael_entry(t)[0] for t in texts))
    return path


def test_runtime_events_follow_the_ccel_as_the_agent_sends_them(
    fake_tsm: FakeKernelTsm, tmp_path: Path
) -> None:
    boot = boot_event_log(b"kernel", "console=hvc0")
    ccel = tmp_path / "CCEL"
    ccel.write_bytes(boot + b"\xff" * 4096)  # the ACPI log area is 0xFF-filled
    aael = _aael(tmp_path, "modelseal.dev LoadModel sha256:" + "ab" * 32)
    attester = Attester(tsm_dir=fake_tsm.base, ccel_path=ccel, aael_path=aael)
    attester.tsm = fake_tsm
    log = b64_decode(attester.evidence(b"\x02" * 48)["cc_eventlog"])
    assert log == boot + aael.read_bytes() + END_FLAG
    parsed = parse_event_log(log)
    assert len(parsed.events) == len(parse_event_log(boot).events) + 1
    components = extract_components(parsed, ALG_SHA384)
    assert components.runtime_events == ["modelseal.dev LoadModel sha256:" + "ab" * 32]


def test_runtime_events_without_a_ccel_get_a_spec_id_header(
    fake_tsm: FakeKernelTsm, tmp_path: Path
) -> None:
    aael = _aael(tmp_path, "d o c", "d o e")
    attester = Attester(tsm_dir=fake_tsm.base, ccel_path=tmp_path / "none", aael_path=aael)
    attester.tsm = fake_tsm
    log = b64_decode(attester.evidence(b"\x02" * 48)["cc_eventlog"])
    assert [e.data[8:] for e in parse_event_log(log).events] == [b"d o c", b"d o e"]
    assert log_end(log) == len(log) - len(END_FLAG)


class GrowingLog(FakeKernelTsm):
    """The Attestation Agent appends an event while every quote is being made."""

    def __init__(self, base: Path, aael: Path) -> None:
        super().__init__(base)
        self.aael = aael

    def _produce(self, entry: Path) -> None:
        super()._produce(entry)
        self.aael.write_bytes(self.aael.read_bytes() + aael_entry("d o x")[0])


def test_a_log_that_changes_during_every_quote_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    aael = _aael(tmp_path, "d o c")
    tsm = GrowingLog(tmp_path / "report", aael)
    monkeypatch.setattr(Path, "mkdir", tsm._patch)
    attester = Attester(tsm_dir=tsm.base, ccel_path=tmp_path / "none", aael_path=aael)
    attester.tsm = tsm
    with pytest.raises(AttestationError, match="changed during each"):
        attester.evidence(b"\x02" * 48)
    assert len(tsm.seen) == 3
