"""mock-tdx attester: TDX-shaped evidence signed by the test CA, for CI and quickstart.

Evidence has the exact TDX wire shape (``{"quote", "cc_eventlog", "aa_eventlog"}``), so
the KBS runs the real DCAP pipeline on it. By default the TD "boots" a mock firmware,
kernel and command line recorded in a CCEL; the RTMRs are the replay of that log, so
event-log claims (``kernel_digest``, ``cmdline_digest``) work as on hardware. Options let
tests vary what policies see: explicit measurements (``mr_td``, ``rtmr0``..``rtmr3``,
``mr_owner``, ``mr_owner_config``, ``mr_config_id``), a debug TD, an out-of-date TCB,
init-data (MRCONFIGID = its digest), quote version 5.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from modelseal._internal.encoding import hex_decode
from modelseal.errors import ConfigError, FormatError, UnsupportedTee
from modelseal.protocol.runtime_events import event_text
from modelseal.tee.base import pad_report_data
from modelseal.tee.eventlog.aael import aael_entry, with_runtime_events
from modelseal.tee.eventlog.encode import EventSpec, encode_event_log
from modelseal.tee.eventlog.replay import replay_ccel
from modelseal.tee.eventlog.tcg import (
    EV_EFI_BOOT_SERVICES_APPLICATION,
    EV_EFI_HANDOFF_TABLES2,
    EV_IPL,
    EV_SEPARATOR,
    parse_event_log,
)
from modelseal.tee.initdata import init_data_field
from modelseal.tee.mock_tdx.ca import OUT_OF_DATE_TEE_TCB_SVN, UP_TO_DATE_TEE_TCB_SVN, MockTdxCA
from modelseal.tee.mock_tdx.quote_builder import TdFields, build_quote
from modelseal.tee.tdx.evidence import TdxEvidence

DEFAULT_MR_TD = hashlib.sha384(b"modelseal mock-tdx TD firmware").digest()
DEFAULT_KERNEL = b"modelseal mock-tdx kernel image"
DEFAULT_CMDLINE = "console=hvc0 root=/dev/vda1 ro"
_REGISTERS = (
    "mr_td",
    "rtmr0",
    "rtmr1",
    "rtmr2",
    "rtmr3",
    "mr_owner",
    "mr_owner_config",
    "mr_config_id",
)


def boot_event_log(kernel: bytes, cmdline: str) -> bytes:
    """A small CCEL: firmware config (RTMR0), kernel (RTMR1), command line (RTMR2)."""
    cmd = f"kernel_cmdline: {cmdline}\x00".encode()
    return encode_event_log(
        [
            EventSpec(1, EV_EFI_HANDOFF_TABLES2, b"\x09TdxTable\x00mock-tdx TD HOB"),
            EventSpec(1, EV_SEPARATOR, bytes(4)),
            EventSpec(2, EV_EFI_BOOT_SERVICES_APPLICATION, bytes(32), measured=kernel),
            EventSpec(3, EV_IPL, cmd),
        ]
    )


class Attester:
    """Inside-the-(mock)-TEE attester; ``ca_dir`` holds (or will hold) the test CA."""

    tee: ClassVar[str] = "mock-tdx"

    def __init__(
        self,
        ca_dir: str | Path | None = None,
        *,
        measurements: Mapping[str, str] | None = None,
        debug: bool = False,
        init_data: bytes | str | None = None,
        tcb: str = "UpToDate",
        kernel: bytes = DEFAULT_KERNEL,
        cmdline: str = DEFAULT_CMDLINE,
        quote_version: int = 4,
    ) -> None:
        if not ca_dir:
            raise ConfigError("mock-tdx needs a CA directory (--mock-tdx-dir, ca_dir=)")
        if tcb not in ("UpToDate", "OutOfDate"):
            raise ConfigError("mock-tdx tcb must be UpToDate or OutOfDate")
        self.ca = MockTdxCA.load_or_create(ca_dir)
        values: dict[str, bytes] = {}
        for name, text in (measurements or {}).items():
            if name not in _REGISTERS:
                raise ConfigError(f"mock-tdx: unknown measurement {name!r}")
            try:
                value = hex_decode(text, what=name)
            except FormatError as exc:
                raise ConfigError(str(exc)) from exc
            if len(value) != 48:
                raise ConfigError(f"mock-tdx: {name} must be 48 bytes of hex")
            values[name] = value
        if init_data is not None:
            if "mr_config_id" in values:
                raise ConfigError("give either init_data or mr_config_id, not both")
            values["mr_config_id"] = init_data_field(init_data, 48)
        self.cc_eventlog: bytes | None = None
        if not any(f"rtmr{i}" in values for i in range(4)):
            self.cc_eventlog = boot_event_log(kernel, cmdline)
            replayed = replay_ccel(parse_event_log(self.cc_eventlog))
            for i in range(4):
                values[f"rtmr{i}"] = replayed[i]
        self.debug = debug
        self.quote_version = quote_version
        self._lock = threading.RLock()
        self._runtime_events = b""
        self.fields = TdFields(
            mr_td=values.get("mr_td", DEFAULT_MR_TD),
            rtmrs=tuple(values.get(f"rtmr{i}", bytes(48)) for i in range(4)),  # type: ignore[arg-type]
            mr_config_id=values.get("mr_config_id", bytes(48)),
            mr_owner=values.get("mr_owner", bytes(48)),
            mr_owner_config=values.get("mr_owner_config", bytes(48)),
            tee_tcb_svn=UP_TO_DATE_TEE_TCB_SVN if tcb == "UpToDate" else OUT_OF_DATE_TEE_TCB_SVN,
            debug=debug,
        )

    @property
    def measurements(self) -> dict[str, str]:
        """What a verifier will report (hex), for writing policies in tests and demos."""
        f = self.fields
        out = {"mr_td": f.mr_td.hex(), "mr_config_id": f.mr_config_id.hex()}
        out.update({f"rtmr{i}": r.hex() for i, r in enumerate(f.rtmrs)})
        return out

    def quote(self, report_data: bytes) -> bytes:
        with self._lock:
            fields = TdFields(
                **{**vars(self.fields), "report_data": pad_report_data(report_data, 64)}
            )
        return build_quote(self.ca, fields, version=self.quote_version)

    def event_log(self) -> bytes | None:
        """The CC event log evidence carries: the boot log, then any runtime (AAEL) events
        and the AA's end flag, as the CoCo Attestation Agent sends it."""
        with self._lock:
            return with_runtime_events(self.cc_eventlog, self._runtime_events)

    def evidence(self, report_data: bytes) -> dict[str, Any]:
        with self._lock:  # one consistent (RTMR3, log) pair per quote
            return TdxEvidence(
                quote=self.quote(report_data), cc_eventlog=self.event_log()
            ).to_json()

    def extend_runtime_measurement(self, domain: str, operation: str, content: str) -> None:
        """Model the AA's ``ExtendRuntimeMeasurement``: log an AAEL event and extend RTMR3
        with its digest (``RTMR3 = SHA-384(RTMR3 ‖ digest)``), as a TD's RTMR extend does.

        Needs the replayable boot log (no explicit RTMR values): a KBS replays RTMR3 from
        the log, so a register the log cannot reproduce would fail every later quote.
        """
        text = event_text(domain, operation, content)
        with self._lock:
            if self.cc_eventlog is None:
                raise UnsupportedTee(
                    "this mock-tdx TD was given explicit RTMR values and has no replayable "
                    "event log: runtime measurement is not supported"
                )
            entry, digest = aael_entry(text)
            r0, r1, r2, r3 = self.fields.rtmrs
            r3 = hashlib.sha384(r3 + digest).digest()
            self.fields = dataclasses.replace(self.fields, rtmrs=(r0, r1, r2, r3))
            self._runtime_events += entry
