"""az-snp-vtpm verifier: Trustee's checks, with the project's SEV-SNP verifier underneath.

Order: evidence JSON (versions 0..2) -> HCL report, ``HCLAkPub``, vTPM quote signature,
PCR digest, HCL user-data == nonce for version 2 (:mod:`modelseal.tee.azure.vtpm`) ->
the SNP report inside the HCL report: VCEK from the evidence, chain to the pinned AMD ARK
at ``now``, ECDSA P-384 signature, VCEK TCB == reported TCB, hwID == CHIP_ID, VMPL 0 (the
paravisor's) -> SNP REPORT_DATA starts with SHA-256(HCL runtime claims). Then the base
verifier: the vTPM nonce is the session's binding; init-data is checked against PCR8.
Claims: the SNP claims (``measurement``, ``host_data``, TCB ...) plus ``pcr0``..``pcr23``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from modelseal.errors import EvidenceError
from modelseal.tee import base
from modelseal.tee.az_snp_vtpm import AzSnpVtpmConfig
from modelseal.tee.azure.evidence import parse_evidence
from modelseal.tee.azure.hcl import REPORT_TYPE_SNP
from modelseal.tee.azure.vtpm import check_hardware_binding, combine_claims, pcr8_field, verify_vtpm
from modelseal.tee.base import Authenticated
from modelseal.tee.plugin import KindConfig
from modelseal.tee.snp import certs as amd
from modelseal.tee.snp.claims import build_claims
from modelseal.tee.snp.verifier import Verifier as SnpVerifier
from modelseal.tee.tpm.structures import parse_attest


class Verifier(base.Verifier):
    """Verifies Azure SEV-SNP CVM evidence; see the module docstring for the checks."""

    tee: ClassVar[str] = "az-snp-vtpm"
    #: The nonce is whatever the guest quoted (Trustee compares it whole); the base
    #: verifier requires it to hold the full binding digest, zero-padded.
    report_data_sizes: ClassVar[tuple[int, int]] = (1, 64)
    report_data_field: ClassVar[str] = "the vTPM quote nonce (extraData)"

    def __init__(self, snp: SnpVerifier | None = None) -> None:
        self._snp = snp or SnpVerifier()

    def may_block(self) -> bool:
        return False  # the VCEK travels in the evidence; nothing is downloaded

    @classmethod
    def from_config(cls, config: KindConfig) -> Verifier:
        if not isinstance(config, AzSnpVtpmConfig) or not config.certs:
            return cls()
        certs, crls = amd.load_sources(config.certs)
        return cls(SnpVerifier(certs, crls=crls))

    @classmethod
    def own_report_data(cls, evidence: Any) -> bytes | None:
        """The vTPM quote's nonce as the (not yet verified) evidence carries it."""
        if not isinstance(evidence, Mapping):
            return None
        return parse_attest(parse_evidence(evidence, hardware="snp").tpm_quote.message).extra_data

    def _verify_evidence(self, evidence: Any, *, now: float) -> Authenticated:
        ev = parse_evidence(evidence, hardware="snp")
        vtpm = verify_vtpm(ev, report_type=REPORT_TYPE_SNP)
        if ev.vcek is None:
            raise EvidenceError("az-snp-vtpm evidence carries no VCEK")
        try:
            vcek = amd.classify(amd.load_certificates(ev.vcek)[0])
        except ValueError as exc:
            raise EvidenceError("az-snp-vtpm evidence: vcek is not a certificate") from exc
        report, signer, chain = self._snp.verify_report(vtpm.hcl.hw_report, [vcek], now=now)
        check_hardware_binding(vtpm.hcl, report.report_data, "the SNP REPORT_DATA")
        hardware = build_claims(report, signer=signer, chain=chain)
        return Authenticated(
            combine_claims(self.tee, hardware, vtpm), init_data_field=pcr8_field(vtpm)
        )
