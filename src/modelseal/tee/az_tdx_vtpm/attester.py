"""az-tdx-vtpm attester: HCL report + vTPM quote, and the TD quote from the Azure IMDS.

The TDREPORT inside the HCL report is turned into a TD quote by
``POST {imds}/acc/tdquote`` (``Metadata: true``) with the JSON body
``{"report": base64url(TDREPORT)}``; the answer is ``{"quote": base64url(TD quote)}``.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import ClassVar

from modelseal._internal.encoding import b64url_decode
from modelseal.errors import AttestationError, FormatError
from modelseal.tee.azure.attester import MAX_IMDS_ANSWER, VtpmAttester
from modelseal.tee.azure.hcl import REPORT_TYPE_TDX, HclReport

TD_QUOTE_PATH = "/acc/tdquote"


class Attester(VtpmAttester):
    """Azure TDX CVM evidence (Trustee ``az-tdx-vtpm``, version 2)."""

    tee: ClassVar[str] = "az-tdx-vtpm"
    report_type: ClassVar[int] = REPORT_TYPE_TDX

    def hardware(self, hcl: HclReport) -> dict[str, bytes]:
        report = base64.urlsafe_b64encode(hcl.hw_report).rstrip(b"=").decode("ascii")
        answer = self.imds(
            "POST", TD_QUOTE_PATH, limit=MAX_IMDS_ANSWER, json_body={"report": report}
        )
        quote = answer.get("quote") if isinstance(answer, Mapping) else None
        if not isinstance(quote, str):
            raise AttestationError("Azure IMDS TD quote answer has no quote")
        try:
            return {"td_quote": b64url_decode(quote, what="Azure IMDS TD quote")}
        except FormatError as exc:
            raise AttestationError(str(exc)) from exc
