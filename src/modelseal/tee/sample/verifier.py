"""Sample verifier: checks only the evidence shape; claims are fixed and insecure.

Refused by :meth:`Verifier.from_config` unless its config opts in, so a
production KBS can never be talked into trusting unsigned evidence. The report-data
binding and the init-data report are the base verifier's; the sample TEE has no
launch-time field, so init-data is reported but bound to nothing (the claims are marked
insecure either way).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from modelseal._internal.encoding import b64_decode
from modelseal.errors import EvidenceError, FormatError, UnsupportedTee
from modelseal.protocol.claims import Claims
from modelseal.tee import base
from modelseal.tee.base import Authenticated, pad_report_data
from modelseal.tee.plugin import KindConfig
from modelseal.tee.sample import ALLOW, SampleConfig

REPORT_DATA_SIZE = 64
MAX_EVIDENCE_FIELD = 256


class Verifier(base.Verifier):
    """Accepts ``{"svn": str, "report_data": std-base64}`` carrying at most 64 bytes."""

    def may_block(self) -> bool:
        return False  # local material only: no collateral is ever downloaded

    tee: ClassVar[str] = "sample"
    insecure: ClassVar[bool] = True
    report_data_field: ClassVar[str] = "sample report_data"

    @classmethod
    def from_config(cls, config: KindConfig) -> Verifier:
        if not isinstance(config, SampleConfig) or not config.allow:
            raise UnsupportedTee(f"the sample TEE is refused: not started with {ALLOW.flag}")
        return cls()

    def _verify_evidence(self, evidence: Any, *, now: float) -> Authenticated:
        if not isinstance(evidence, Mapping):
            raise EvidenceError("sample evidence must be a JSON object")
        svn = evidence.get("svn")
        encoded = evidence.get("report_data")
        if not isinstance(svn, str) or not isinstance(encoded, str):
            raise EvidenceError("sample evidence needs string members svn and report_data")
        if len(svn) > MAX_EVIDENCE_FIELD or len(encoded) > MAX_EVIDENCE_FIELD:
            raise EvidenceError("sample evidence member too long")
        try:
            reported = b64_decode(encoded, what="sample report_data")
        except FormatError as exc:
            raise EvidenceError("sample report_data is not standard base64") from exc
        if len(reported) > REPORT_DATA_SIZE:
            raise EvidenceError("sample report_data is longer than 64 bytes")
        return Authenticated(
            Claims(
                tee="sample",
                debug=False,
                report_data=pad_report_data(reported, REPORT_DATA_SIZE),
                tcb_status="UpToDate",
                insecure=True,
                extra={"svn": "1"},
            )
        )
