"""The checks both Azure vTPM verifiers run, and the claims they share.

Order (each failure an ``EvidenceError`` naming the reason): HCL report layout -> the
``HCLAkPub`` key from its runtime claims -> vTPM quote signature under that key
(RSASSA-PKCS1-v1_5 / SHA-256 over the TPMS_ATTEST, as Trustee checks it) -> the quote
selects SHA-256 PCRs 0..23 and its pcrDigest is SHA-256 of the 24 PCR values sent ->
for evidence version 2, the HCL ``user-data`` starts with the quote's nonce (so the HCL
report was produced for this session). The hardware half (the SNP report or TD quote
signing the runtime claims' digest) is the caller's; the nonce is compared with the
session's binding by the base verifier, never here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
from dataclasses import dataclass
from typing import Any

from modelseal.errors import EvidenceError
from modelseal.protocol.claims import Claims
from modelseal.tee.azure.evidence import PCR_COUNT, AzEvidence
from modelseal.tee.azure.hcl import HclReport, parse_hcl_report
from modelseal.tee.base import InitDataField
from modelseal.tee.tpm.quote import VerifiedQuote, verify_quote
from modelseal.tee.tpm.structures import Signature
from modelseal.tee.tpm.verifier import INIT_DATA_PCR, Pcr8Field

#: What the hardware report's report data starts with: SHA-256 of the runtime claims.
BOUND_PREFIX = 32


@dataclass(frozen=True)
class VerifiedVtpm:
    """An HCL report and a vTPM quote signed by the AK that report names."""

    hcl: HclReport
    quote: VerifiedQuote
    ak: bytes
    version: int


def verify_vtpm(ev: AzEvidence, *, report_type: int) -> VerifiedVtpm:
    """Check the HCL report and the vTPM quote (see the module docstring)."""
    hcl = parse_hcl_report(ev.hcl_report)
    if hcl.report_type != report_type:
        raise EvidenceError(
            f"HCL report holds report type {hcl.report_type}, this kind expects {report_type}"
        )
    ak = hcl.ak_spki()
    if len(ev.tpm_quote.signature) < 256:
        raise EvidenceError("vTPM quote signature is shorter than an RSA-2048 signature")
    signature = Signature("rsassa", "sha256", value=ev.tpm_quote.signature)
    quote = verify_quote(ak, ev.tpm_quote.message, signature, ev.tpm_quote.pcrs)
    if quote.bank != "sha256" or sorted(quote.pcrs) != list(range(PCR_COUNT)):
        raise EvidenceError("vTPM quote must cover SHA-256 PCRs 0..23")
    if ev.version >= 2:
        nonce = quote.attest.extra_data
        user_data = hcl.user_data()
        if user_data is None or not hmac.compare_digest(user_data[: len(nonce)], nonce):
            raise EvidenceError("HCL user-data does not match the vTPM quote nonce")
    return VerifiedVtpm(hcl, quote, ak, ev.version)


def check_hardware_binding(hcl: HclReport, report_data: bytes, where: str) -> None:
    """The hardware report's report data must start with SHA-256(runtime claims)."""
    if not hmac.compare_digest(report_data[:BOUND_PREFIX], hcl.runtime_data_sha256):
        raise EvidenceError(
            f"HCL runtime-claims digest does not match {where}: the attestation key is not "
            "vouched for by the hardware"
        )


def vtpm_measurements(vtpm: VerifiedVtpm) -> dict[str, str]:
    """``pcr0``..``pcr23`` (SHA-256 bank, lower hex) for release policies."""
    return {f"pcr{i}": value.hex() for i, value in sorted(vtpm.quote.pcrs.items())}


def vtpm_extra(vtpm: VerifiedVtpm) -> dict[str, Any]:
    """Facts for the audit log: evidence version, AK digest, quote clock, HCL metadata."""
    attest = vtpm.quote.attest
    user_data = vtpm.hcl.user_data()
    return {
        "evidence_version": vtpm.version,
        "vtpm": {
            "ak_sha256": hashlib.sha256(vtpm.ak).hexdigest(),
            "qualified_signer": attest.qualified_signer.hex(),
            "clock": attest.clock,
            "reset_count": attest.reset_count,
            "restart_count": attest.restart_count,
            "firmware_version": f"{attest.firmware_version:016x}",
        },
        "hcl": {
            "version": vtpm.hcl.version,
            "runtime_data_sha256": vtpm.hcl.runtime_data_sha256.hex(),
            "user_data": None if user_data is None else user_data.hex(),
            "vm_configuration": vtpm.hcl.vm_configuration(),
        },
    }


def combine_claims(tee: str, hardware: Claims, vtpm: VerifiedVtpm) -> Claims:
    """Claims of an Azure kind: the hardware report's claims (measurements, TCB status,
    debug) plus the vTPM PCRs; the report data is the vTPM quote's nonce, which is what
    carries the session binding on these platforms."""
    measurements = dict(hardware.measurements)
    measurements.update(vtpm_measurements(vtpm))
    extra = {"hardware": dict(hardware.extra), **vtpm_extra(vtpm)}
    extra["hardware"]["report_data"] = hardware.report_data.hex()
    return dataclasses.replace(
        hardware,
        tee=tee,
        report_data=vtpm.quote.attest.extra_data,
        measurements=measurements,
        init_data_digest=None,
        init_data={},
        extra=extra,
    )


def pcr8_field(vtpm: VerifiedVtpm) -> InitDataField:
    """Trustee's init-data binding on Azure: SHA-256 PCR8 extended once with the digest."""
    return Pcr8Field("PCR8", vtpm.quote.pcrs[INIT_DATA_PCR])
