"""Typed, verified claims: the only thing release policies ever look at."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Claims:
    """What a verifier established about a TEE, normalized across kinds.

    ``measurements`` maps lower-case claim names (``mr_td``, ``rtmr0``, ``measurement``,
    ``pcr7``, ``kernel`` ...) to lower-case hex. ``init_data`` holds the ``[data]`` table of
    a verified init-data document; ``extra`` keeps kind-specific facts for the audit log.
    """

    tee: str
    debug: bool
    report_data: bytes
    tcb_status: str | None = None
    advisories: tuple[str, ...] = ()
    measurements: Mapping[str, str] = field(default_factory=dict)
    init_data_digest: str | None = None
    init_data: Mapping[str, str] = field(default_factory=dict)
    insecure: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)
    #: runtime events (``"<domain> <operation> <content>"``) of an event log that
    #: replayed to the attested registers, in log order (CoCo AA events on TDX: RTMR3)
    runtime_events: tuple[str, ...] = ()
    #: Claims of device TEEs (GPUs) verified in the same attestation, bound to the same
    #: session: composite evidence. Empty for a CPU TEE alone.
    devices: tuple[Claims, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """JSON-safe form (bytes as hex) for tokens, the audit log and ``evidence verify``;
        ``devices`` appears only when the attestation carried device evidence."""
        out: dict[str, Any] = {
            "tee": self.tee,
            "debug": self.debug,
            "tcb_status": self.tcb_status,
            "advisories": list(self.advisories),
            "measurements": dict(self.measurements),
            "init_data_digest": self.init_data_digest,
            "init_data": dict(self.init_data),
            "report_data": self.report_data.hex(),
            "insecure": self.insecure,
            "extra": dict(self.extra),
            "runtime_events": list(self.runtime_events),
        }
        if self.devices:
            out["devices"] = [d.to_json() for d in self.devices]
        return out
