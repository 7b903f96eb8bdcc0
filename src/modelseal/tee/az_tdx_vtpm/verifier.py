"""az-tdx-vtpm verifier: Trustee's checks, with the project's DCAP pipeline underneath.

Order: evidence JSON (versions 0..2) -> HCL report, ``HCLAkPub``, vTPM quote signature,
PCR digest, HCL user-data == nonce for version 2 (:mod:`modelseal.tee.azure.vtpm`) ->
the TD report in the HCL report describes the same TD as the TD quote (report data,
MRTD, RTMRs, MRCONFIGID, MROWNER, MROWNERCONFIG, attributes, XFAM: the TD report itself
carries only a MAC the guest cannot check, so this keeps its bytes from saying anything
the quote does not) -> TD quote REPORTDATA starts with SHA-256(HCL runtime claims) ->
the TD quote through the same DCAP pipeline as ``tdx`` (Intel root, collateral, TCB).
Then the base verifier: the vTPM nonce is the session's binding; init-data is checked
against PCR8. Claims: the TDX claims (``mr_td``, ``rtmr0``.. , TCB) plus ``pcr0``..``pcr23``.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from typing import Any, ClassVar

from modelseal.errors import EvidenceError
from modelseal.tee import base
from modelseal.tee.azure.evidence import parse_evidence
from modelseal.tee.azure.hcl import REPORT_TYPE_TDX
from modelseal.tee.azure.vtpm import check_hardware_binding, combine_claims, pcr8_field, verify_vtpm
from modelseal.tee.base import Authenticated
from modelseal.tee.plugin import KindConfig
from modelseal.tee.tdx.quote import TdReport, parse_quote
from modelseal.tee.tdx.verifier import Verifier as TdxVerifier
from modelseal.tee.tdx.verifier import collateral_store
from modelseal.tee.tpm.structures import parse_attest

#: TDREPORT offsets (TDX module ABI): REPORTMACSTRUCT.reportdata and TDINFO fields.
_TD_REPORT_FIELDS: tuple[tuple[str, int, int], ...] = (
    ("report_data", 128, 64),
    ("td_attributes", 512, 8),
    ("xfam", 520, 8),
    ("mr_td", 528, 48),
    ("mr_config_id", 576, 48),
    ("mr_owner", 624, 48),
    ("mr_owner_config", 672, 48),
    ("rtmr0", 720, 48),
    ("rtmr1", 768, 48),
    ("rtmr2", 816, 48),
    ("rtmr3", 864, 48),
)


def check_td_report(td_report: bytes, quote: TdReport) -> None:
    """The HCL's TD report must hold the quote's values in every TD field it shares."""
    for name, offset, size in _TD_REPORT_FIELDS:
        if not hmac.compare_digest(td_report[offset : offset + size], getattr(quote, name)):
            raise EvidenceError(
                f"the TD report in the HCL report and the TD quote differ in {name}"
            )


class Verifier(base.Verifier):
    """Verifies Azure TDX CVM evidence; see the module docstring for the checks."""

    tee: ClassVar[str] = "az-tdx-vtpm"
    #: The nonce is whatever the guest quoted (Trustee compares it whole); the base
    #: verifier requires it to hold the full binding digest, zero-padded.
    report_data_sizes: ClassVar[tuple[int, int]] = (1, 64)
    report_data_field: ClassVar[str] = "the vTPM quote nonce (extraData)"

    def __init__(self, dcap: TdxVerifier) -> None:
        self._dcap = dcap

    def may_block(self) -> bool:
        return self._dcap.may_block()

    @classmethod
    def from_config(cls, config: KindConfig) -> Verifier:
        return cls(TdxVerifier(collateral_store(config)))

    @classmethod
    def own_report_data(cls, evidence: Any) -> bytes | None:
        """The vTPM quote's nonce as the (not yet verified) evidence carries it."""
        if not isinstance(evidence, Mapping):
            return None
        return parse_attest(parse_evidence(evidence, hardware="tdx").tpm_quote.message).extra_data

    def _verify_evidence(self, evidence: Any, *, now: float) -> Authenticated:
        ev = parse_evidence(evidence, hardware="tdx")
        vtpm = verify_vtpm(ev, report_type=REPORT_TYPE_TDX)
        if ev.td_quote is None:
            raise EvidenceError("az-tdx-vtpm evidence carries no TD quote")
        quote = parse_quote(ev.td_quote)
        if not isinstance(quote.report, TdReport):
            raise EvidenceError("az-tdx-vtpm evidence: td_quote is not a TD quote")
        check_td_report(vtpm.hcl.hw_report, quote.report)
        check_hardware_binding(vtpm.hcl, quote.report.report_data, "the TD quote's REPORTDATA")
        hardware = self._dcap.verify_quote(ev.td_quote, now=now).claims
        return Authenticated(
            combine_claims(self.tee, hardware, vtpm), init_data_field=pcr8_field(vtpm)
        )
