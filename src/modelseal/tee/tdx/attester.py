"""TDX attester (inside the TD): a DCAP quote over the report data, plus the CCEL log.

Quote sources, in order:

1. **configfs-tsm** (Linux ≥ 6.7): ``mkdir /sys/kernel/config/tsm/report/<fresh>``, check
   ``provider`` is ``tdx_guest``, read ``generation``, write the 64-byte ``inblob``, read
   ``outblob`` (the quote), read ``generation`` again: it must have advanced by exactly
   one, otherwise another writer raced us on the same entry and the quote may cover
   someone else's data (we retry on a fresh entry). ``rmdir`` the entry in every case.
2. **/dev/tdx_guest + QGS over vsock** (kernels without configfs-tsm): ``TDX_CMD_GET_REPORT0``
   returns the 1024-byte TDREPORT for our report data; the host's Quote Generation
   Service turns it into a quote. Upstream kernels have no GET_QUOTE ioctl, so we talk to
   the QGS directly over vsock (CID 2, the port from ``/etc/tdx-attest.conf`` ``port=N``,
   Intel's ``qgs_msg`` GET_QUOTE request/response v1.0).

Evidence: ``{"quote": b64, "cc_eventlog": b64 | null, "aa_eventlog": null}`` with the CCEL
log area from ``/sys/firmware/acpi/tables/data/CCEL`` when readable, followed by the CoCo
Attestation Agent's runtime events (``/run/attestation-agent/eventlog``) when it kept any,
as the AA's own evidence carries them.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import socket
import struct
from pathlib import Path
from typing import Any, ClassVar

from modelseal._internal import environment
from modelseal.errors import AttestationError, UnsupportedTee
from modelseal.tee.base import pad_report_data
from modelseal.tee.eventlog.aael import AAEL_PATH, with_runtime_events
from modelseal.tee.eventlog.ccel import CCEL_DATA_PATH, read_ccel
from modelseal.tee.tdx.evidence import TdxEvidence

TSM_REPORT_DIR = Path("/sys/kernel/config/tsm/report")
TDX_GUEST_DEVICE = Path("/dev/tdx_guest")
TDX_ATTEST_CONF = Path("/etc/tdx-attest.conf")
TSM_OUTBLOB_MAX = 32 * 1024
TDREPORT_LEN = 1024
#: _IOWR('T', 1, struct tdx_report_req { u8 reportdata[64]; u8 tdreport[1024]; })
TDX_CMD_GET_REPORT0 = (3 << 30) | ((64 + TDREPORT_LEN) << 16) | (ord("T") << 8) | 1
VSOCK_HOST_CID = 2
QGS_GET_QUOTE_REQ = 0
QGS_GET_QUOTE_RESP = 1
QGS_MAX_MESSAGE = 64 * 1024


class ConfigfsTsm:
    """One quote request through configfs-tsm (``base`` is the ``tsm/report`` directory)."""

    def __init__(self, base: Path = TSM_REPORT_DIR, *, provider: str = "tdx_guest") -> None:
        self.base = base
        self.provider = provider

    def available(self) -> bool:
        return self.base.is_dir()

    @staticmethod
    def _read_int(path: Path) -> int:
        try:
            return int(path.read_text().strip())
        except (OSError, ValueError) as exc:
            raise AttestationError(f"configfs-tsm: cannot read {path.name}: {exc}") from exc

    def _produce(self, entry: Path) -> None:
        """Hook between writing inblob and reading outblob (the kernel does the work)."""

    def quote(self, report_data: bytes, *, attempts: int = 3) -> bytes:
        inblob = pad_report_data(report_data, 64)
        for _ in range(attempts):
            entry = self.base / f"modelseal-{os.getpid()}-{secrets.token_hex(6)}"
            try:
                entry.mkdir(mode=0o700)
            except OSError as exc:
                raise AttestationError(
                    f"configfs-tsm: cannot create a report entry: {exc}"
                ) from exc
            try:
                try:
                    provider = (entry / "provider").read_text().strip()
                except OSError as exc:
                    raise AttestationError(f"configfs-tsm: no provider: {exc}") from exc
                if provider != self.provider:
                    raise UnsupportedTee(
                        f"configfs-tsm provider is {provider!r}, not {self.provider!r}"
                    )
                before = self._read_int(entry / "generation")
                try:
                    (entry / "inblob").write_bytes(inblob)
                    self._produce(entry)
                    with (entry / "outblob").open("rb") as fh:
                        blob = fh.read(TSM_OUTBLOB_MAX + 1)
                except OSError as exc:
                    raise AttestationError(f"configfs-tsm: quote generation failed: {exc}") from exc
                after = self._read_int(entry / "generation")
                if after == before + 1 and blob and len(blob) <= TSM_OUTBLOB_MAX:
                    return blob
            finally:
                self._remove(entry)
        raise AttestationError("configfs-tsm: report entry raced by another writer; giving up")

    @staticmethod
    def _remove(entry: Path) -> None:
        try:
            entry.rmdir()
            return
        except OSError:
            pass
        # configfs removes the attribute files with the directory; a plain directory (a
        # test double) still holds them. A leftover entry is harmless: never mask the result.
        try:
            for child in entry.iterdir():
                child.unlink(missing_ok=True)
            entry.rmdir()
        except OSError:
            return


def get_tdreport(report_data: bytes, device: Path = TDX_GUEST_DEVICE) -> bytes:
    """TDREPORT for ``report_data`` via the upstream ``TDX_CMD_GET_REPORT0`` ioctl."""
    buf = bytearray(pad_report_data(report_data, 64) + bytes(TDREPORT_LEN))
    try:
        fd = os.open(device, os.O_RDWR)
    except OSError as exc:
        raise UnsupportedTee(f"cannot open {device}: {exc}") from exc
    try:
        fcntl.ioctl(fd, TDX_CMD_GET_REPORT0, buf, True)
    except OSError as exc:
        raise AttestationError(f"TDX_CMD_GET_REPORT0 failed: {exc}") from exc
    finally:
        os.close(fd)
    return bytes(buf[64:])


def qgs_request(tdreport: bytes) -> bytes:
    """Length-prefixed QGS GET_QUOTE request (v1.0) for a TDREPORT."""
    if len(tdreport) != TDREPORT_LEN:
        raise AttestationError("TDREPORT must be 1024 bytes")
    body_len = 16 + 8 + TDREPORT_LEN
    msg = struct.pack("<HHIII", 1, 0, QGS_GET_QUOTE_REQ, body_len, 0)
    msg += struct.pack("<II", TDREPORT_LEN, 0) + tdreport
    return struct.pack(">I", len(msg)) + msg


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise AttestationError("QGS closed the connection early")
        out.extend(chunk)
    return bytes(out)


def qgs_get_quote(sock: socket.socket, tdreport: bytes) -> bytes:
    """Send a GET_QUOTE request on a connected socket and return the quote."""
    sock.sendall(qgs_request(tdreport))
    (length,) = struct.unpack(">I", _recv_exact(sock, 4))
    if not 24 <= length <= QGS_MAX_MESSAGE:
        raise AttestationError(f"QGS response length {length} out of range")
    msg = _recv_exact(sock, length)
    major, _minor, mtype, size, error = struct.unpack_from("<HHIII", msg)
    if major != 1 or mtype != QGS_GET_QUOTE_RESP or size != length:
        raise AttestationError("QGS sent an unexpected message")
    if error != 0:
        raise AttestationError(f"QGS could not generate a quote (error 0x{error:x})")
    id_size, quote_size = struct.unpack_from("<II", msg, 16)
    start = 24 + id_size
    if start + quote_size != length or quote_size == 0:
        raise AttestationError("QGS response sizes are inconsistent")
    return msg[start : start + quote_size]


def qgs_port(conf: Path = TDX_ATTEST_CONF) -> int | None:
    """The vsock port of the host QGS from ``/etc/tdx-attest.conf`` (``port=N``)."""
    try:
        for line in conf.read_text().splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "port" and value.strip().isdigit():
                return int(value.strip())
    except OSError:
        return None
    return None


class Attester:
    """TDX evidence producer; paths are parameters so tests can point them elsewhere."""

    tee: ClassVar[str] = "tdx"

    def __init__(
        self,
        *,
        tsm_dir: str | Path = TSM_REPORT_DIR,
        device: str | Path = TDX_GUEST_DEVICE,
        ccel_path: str | Path = CCEL_DATA_PATH,
        qgs_conf: str | Path = TDX_ATTEST_CONF,
        timeout: float = 30.0,
        aael_path: str | Path | None = None,
    ) -> None:
        self.tsm = ConfigfsTsm(Path(tsm_dir))
        self.device = Path(device)
        self.ccel_path = Path(ccel_path)
        self.qgs_conf = Path(qgs_conf)
        self.timeout = timeout
        self.aael_path = Path(aael_path or environment.variable("AAEL_PATH") or AAEL_PATH)

    def quote(self, report_data: bytes) -> bytes:
        if self.tsm.available():
            return self.tsm.quote(report_data)
        if self.device.exists():
            port = qgs_port(self.qgs_conf)
            if port is None:
                raise UnsupportedTee(
                    f"{self.device} exists but configfs-tsm is absent and {self.qgs_conf} "
                    "names no QGS vsock port; use a kernel with configfs-tsm (>= 6.7)"
                )
            tdreport = get_tdreport(report_data, self.device)
            family = getattr(socket, "AF_VSOCK", None)
            if family is None:
                raise UnsupportedTee("this Python has no AF_VSOCK support")
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                sock.settimeout(self.timeout)
                try:
                    sock.connect((VSOCK_HOST_CID, port))
                    return qgs_get_quote(sock, tdreport)
                except OSError as exc:
                    raise AttestationError(f"QGS on vsock port {port}: {exc}") from exc
        raise UnsupportedTee("no TDX guest interface: neither configfs-tsm nor /dev/tdx_guest")

    def _runtime_log(self) -> bytes | None:
        try:
            data = self.aael_path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise AttestationError(f"cannot read the AA event log {self.aael_path}: {exc}") from exc
        return data or None

    def evidence(self, report_data: bytes) -> dict[str, Any]:
        """The quote and the CC event log; when the CoCo Attestation Agent recorded runtime
        events (its log at ``aael_path``), they follow the CCEL as the AA sends them, so a
        KBS can replay RTMR3. The AA may extend RTMR3 while we quote: the log is read before
        and after the quote and must not have changed (else the quote is taken again)."""
        for _ in range(3):
            before = self._runtime_log()
            quote = self.quote(report_data)
            if self._runtime_log() == before:
                log = with_runtime_events(read_ccel(self.ccel_path), before)
                return TdxEvidence(quote=quote, cc_eventlog=log).to_json()
        raise AttestationError("the AA event log changed during each of 3 quotes")
