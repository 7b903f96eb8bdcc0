"""Event logs shared by the TDX (CCEL) and TPM (TCG2) verifiers: parse, replay, extract.

Public API: :func:`parse_event_log`, :func:`replay_ccel`, :func:`replay_tcg2`,
:func:`check_registers`, :func:`extract_components`, and the CCEL helpers in
:mod:`modelseal.tee.eventlog.ccel`.
"""

from __future__ import annotations

from modelseal.tee.eventlog.components import MeasuredComponents, extract_components
from modelseal.tee.eventlog.replay import check_registers, replay_ccel, replay_tcg2
from modelseal.tee.eventlog.tcg import Event, EventLog, parse_event_log

__all__ = [
    "Event",
    "EventLog",
    "MeasuredComponents",
    "check_registers",
    "extract_components",
    "parse_event_log",
    "replay_ccel",
    "replay_tcg2",
]
