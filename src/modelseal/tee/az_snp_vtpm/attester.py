"""az-snp-vtpm attester: HCL report + vTPM quote, and the VCEK from the Azure IMDS.

The VCEK comes from ``GET {imds}/metadata/THIM/amd/certification`` (``Metadata: true``),
whose JSON answer holds ``vcekCert`` (PEM) and ``certificateChain`` (PEM ASK + ARK);
the evidence carries the VCEK as DER, as guest-components' attester sends it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from modelseal.crypto.x509_pem import pem_to_der
from modelseal.errors import AttestationError
from modelseal.tee.azure.attester import VtpmAttester
from modelseal.tee.azure.hcl import REPORT_TYPE_SNP, HclReport

CERTIFICATION_PATH = "/metadata/THIM/amd/certification"
MAX_CERTIFICATION = 64 * 1024


class Attester(VtpmAttester):
    """Azure SEV-SNP CVM evidence (Trustee ``az-snp-vtpm``, version 2)."""

    tee: ClassVar[str] = "az-snp-vtpm"
    report_type: ClassVar[int] = REPORT_TYPE_SNP

    def hardware(self, hcl: HclReport) -> dict[str, bytes]:
        answer = self.imds("GET", CERTIFICATION_PATH, limit=MAX_CERTIFICATION)
        pem = answer.get("vcekCert") if isinstance(answer, Mapping) else None
        if not isinstance(pem, str):
            raise AttestationError("Azure IMDS certification answer has no vcekCert")
        try:
            return {"vcek": pem_to_der(pem.encode("ascii"))}
        except (ValueError, UnicodeEncodeError) as exc:
            raise AttestationError("Azure IMDS vcekCert is not a PEM certificate") from exc
