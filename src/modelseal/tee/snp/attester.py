"""SEV-SNP attester: a report bound to ``report_data`` via configfs-tsm or /dev/sev-guest.

configfs-tsm (Linux >= 6.7, ``/sys/kernel/config/tsm/report``): create an entry, check
``provider`` is ``sev_guest``, write ``privlevel`` and the 64-byte ``inblob``, read
``outblob`` (the report) and ``auxblob`` (the host's certificate table, when it supplied
one); ``generation`` is read around ``outblob`` so a concurrent writer is detected.
Fallback: ``SNP_GET_EXT_REPORT`` / ``SNP_GET_REPORT`` ioctls on ``/dev/sev-guest``.
Evidence is Trustee's ``SnpEvidence`` JSON (see :mod:`modelseal.tee.snp.evidence`).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import secrets
import struct
from pathlib import Path
from typing import Any, ClassVar

from modelseal.errors import AttestationError, EvidenceError, UnsupportedTee
from modelseal.tee.base import pad_report_data
from modelseal.tee.snp.evidence import CertEntry, build_evidence, parse_cert_table
from modelseal.tee.snp.report import REPORT_SIZE

TSM_ROOT = Path("/sys/kernel/config/tsm/report")
SEV_GUEST = Path("/dev/sev-guest")
REPORT_DATA_SIZE = 64

# <linux/sev-guest.h>: _IOWR('S', nr, struct snp_guest_request_ioctl) with a 32-byte struct.
SNP_GET_REPORT = 0xC0205300
SNP_GET_EXT_REPORT = 0xC0205302
_MSG_REPORT_RSP_HEADER = 32  # status u32, report_size u32, reserved[24]
_RESP_SIZE = 4000
_CERTS_PAGES = 4


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise AttestationError(f"configfs-tsm: cannot read {path.name}: {exc.strerror}") from exc


def report_via_entry(entry: Path, report_data: bytes, vmpl: int) -> tuple[bytes, bytes | None]:
    """Run one request on an existing configfs-tsm entry; returns (report, auxblob)."""
    provider = _read(entry / "provider").decode(errors="replace").strip()
    if provider != "sev_guest":
        raise UnsupportedTee(f"configfs-tsm provider is {provider!r}, not sev_guest")
    if (entry / "privlevel").exists():
        (entry / "privlevel").write_text(str(vmpl))
    (entry / "inblob").write_bytes(report_data)
    before = _read(entry / "generation").strip()
    report = _read(entry / "outblob")
    aux = _read(entry / "auxblob") if (entry / "auxblob").exists() else None
    after = _read(entry / "generation").strip()
    if before != after:
        raise AttestationError("configfs-tsm entry was modified concurrently; retry")
    return report, aux or None


def report_via_configfs(root: Path, report_data: bytes, vmpl: int) -> tuple[bytes, bytes | None]:
    """Create a private entry under ``root``, request a report, always remove the entry."""
    entry = root / f"modelseal-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        entry.mkdir()
    except OSError as exc:
        raise AttestationError(f"configfs-tsm: cannot create a report entry: {exc}") from exc
    try:
        return report_via_entry(entry, report_data, vmpl)
    finally:
        with contextlib.suppress(OSError):
            entry.rmdir()


class _Request(ctypes.Structure):
    _fields_ = (
        ("msg_version", ctypes.c_uint8),
        ("req_data", ctypes.c_uint64),
        ("resp_data", ctypes.c_uint64),
        ("exitinfo2", ctypes.c_uint64),
    )


def report_via_ioctl(device: Path, report_data: bytes, vmpl: int) -> tuple[bytes, bytes | None]:
    """SNP_GET_EXT_REPORT (report + certificate table), else SNP_GET_REPORT."""
    req = ctypes.create_string_buffer(report_data + struct.pack("<I", vmpl) + bytes(28), 96)
    certs = ctypes.create_string_buffer(_CERTS_PAGES * 4096)
    ext = ctypes.create_string_buffer(
        bytes(req.raw) + struct.pack("<QI", ctypes.addressof(certs), len(certs)) + bytes(4), 112
    )
    resp = ctypes.create_string_buffer(_RESP_SIZE)
    try:
        fd = os.open(device, os.O_RDWR)
    except OSError as exc:
        raise UnsupportedTee(f"cannot open {device}: {exc.strerror}") from exc
    try:
        cert_table: bytes | None = None
        try:
            ioreq = _Request(1, ctypes.addressof(ext), ctypes.addressof(resp), 0)
            fcntl.ioctl(fd, SNP_GET_EXT_REPORT, ioreq)
            cert_table = certs.raw
        except OSError as exc:
            if exc.errno not in (errno.ENOTTY, errno.EINVAL, errno.ENOSPC):
                raise AttestationError(f"SNP_GET_EXT_REPORT failed: {exc.strerror}") from exc
            ioreq = _Request(1, ctypes.addressof(req), ctypes.addressof(resp), 0)
            try:
                fcntl.ioctl(fd, SNP_GET_REPORT, ioreq)
            except OSError as exc2:
                raise AttestationError(f"SNP_GET_REPORT failed: {exc2.strerror}") from exc2
    finally:
        os.close(fd)
    status, size = struct.unpack_from("<II", resp.raw, 0)
    if status != 0 or size != REPORT_SIZE:
        raise AttestationError(f"SNP firmware returned status {status:#x}, size {size}")
    report = resp.raw[_MSG_REPORT_RSP_HEADER : _MSG_REPORT_RSP_HEADER + REPORT_SIZE]
    if cert_table is not None and not any(cert_table[:24]):
        cert_table = None
    return report, cert_table


class Attester:
    """SNP evidence for ``report_data`` (≤ 64 bytes, zero-padded)."""

    tee: ClassVar[str] = "snp"

    def __init__(
        self,
        *,
        vmpl: int = 0,
        tsm_root: str | Path = TSM_ROOT,
        device: str | Path = SEV_GUEST,
    ) -> None:
        if not 0 <= vmpl <= 3:
            raise UnsupportedTee("SNP VMPL must be 0..3")
        self._vmpl = vmpl
        self._tsm_root = Path(tsm_root)
        self._device = Path(device)

    def evidence(self, report_data: bytes) -> Any:
        if len(report_data) > REPORT_DATA_SIZE:
            raise AttestationError("SNP report data must be at most 64 bytes")
        data = pad_report_data(report_data, REPORT_DATA_SIZE)
        if self._tsm_root.is_dir():
            report, table = report_via_configfs(self._tsm_root, data, self._vmpl)
        elif self._device.exists():
            report, table = report_via_ioctl(self._device, data, self._vmpl)
        else:
            raise UnsupportedTee(
                f"no SEV-SNP guest interface: neither {self._tsm_root} nor {self._device}"
            )
        certs: list[CertEntry] = []
        if table:
            try:
                certs = parse_cert_table(table)
            except EvidenceError as exc:
                raise AttestationError(f"host certificate table: {exc}") from exc
        if len(report) != REPORT_SIZE:
            raise AttestationError(f"SNP report has {len(report)} bytes, not {REPORT_SIZE}")
        return build_evidence(report, certs)
