"""SEV-SNP verifier: report v2/v3/v5, VCEK/VLEK chain to the pinned AMD ARK, binding.

Order of checks (each failure is an ``EvidenceError`` naming the reason):
strict report parsing -> endorsement key (VCEK or VLEK as the report's SIGNING_KEY says)
from the evidence cert table or ``--snp-certs`` -> chain VEK <- ASK/ASVK <- pinned ARK at
``now`` -> ECDSA P-384 report signature -> VEK SPL extensions == reported TCB and hwID ==
CHIP_ID (VCEK) -> VMPL; then the base verifier: REPORT_DATA == zero-padded binding and
HOST_DATA == init-data digest. No network: missing certificates are a clear error (AMD
KDS URL in the message).
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from cryptography import x509

from modelseal._internal.encoding import hex_decode
from modelseal.crypto.snp_ecdsa import is_p384_key, verify_report_signature
from modelseal.errors import EvidenceError, FormatError
from modelseal.tee import base
from modelseal.tee.base import Authenticated, InitDataField
from modelseal.tee.plugin import KindConfig
from modelseal.tee.snp import SnpConfig
from modelseal.tee.snp import certs as amd
from modelseal.tee.snp.claims import build_claims
from modelseal.tee.snp.evidence import (
    build_evidence,
    cert_chain_from_json,
    report_bytes_from_json,
)
from modelseal.tee.snp.report import AttestationReport, Product, SigningKey, parse_report

KDS = "https://kdsintf.amd.com"


def kds_vcek_url(report: AttestationReport, product: Product) -> str:
    """Where an operator fetches the VCEK for this report (AMD KDS, documented form)."""
    tcb = report.reported_tcb
    hw = report.chip_id[:8] if product is Product.TURIN else report.chip_id
    query = f"blSPL={tcb.bootloader:02}&teeSPL={tcb.tee:02}&snpSPL={tcb.snp:02}"
    query += f"&ucodeSPL={tcb.microcode:02}"
    if product is Product.TURIN:
        query = f"fmcSPL={tcb.fmc or 0:02}&" + query
    return f"{KDS}/vcek/v1/{product.value}/{hw.hex()}?{query}"


class Verifier(base.Verifier):
    """Verifies Trustee-shaped SNP evidence; see the module docstring for the checks."""

    def may_block(self) -> bool:
        return False  # local material only: no collateral is ever downloaded

    tee: ClassVar[str] = "snp"
    report_data_field: ClassVar[str] = "SNP REPORT_DATA"

    def __init__(
        self,
        certificates: Sequence[amd.AmdCert] = (),
        *,
        crls: Sequence[x509.CertificateRevocationList] = (),
        max_vmpl: int = 0,
    ) -> None:
        self._configured = list(certificates)
        self._crls = list(crls)
        self._max_vmpl = max_vmpl

    @classmethod
    def from_config(cls, config: KindConfig) -> Verifier:
        if not isinstance(config, SnpConfig) or not config.certs:
            return cls()
        certs, crls = amd.load_sources(config.certs)
        return cls(certs, crls=crls)

    @classmethod
    def evidence_from_file(cls, raw: bytes) -> Any:
        """The evidence JSON, or a bare report (binary or hex) wrapped as evidence."""
        text = raw.strip()
        if text[:1] == b"{":
            return super().evidence_from_file(raw)
        try:
            report = hex_decode(text.decode("ascii"), what="SNP report")
        except (UnicodeDecodeError, FormatError):
            report = raw
        return build_evidence(report)

    @classmethod
    def own_report_data(cls, evidence: Any) -> bytes | None:
        """REPORT_DATA as the (not yet verified) report carries it."""
        if not isinstance(evidence, Mapping):
            return None
        return parse_report(report_bytes_from_json(evidence.get("attestation_report"))).report_data

    def _verify_evidence(self, evidence: Any, *, now: float) -> Authenticated:
        if not isinstance(evidence, Mapping):
            raise EvidenceError("SNP evidence must be a JSON object")
        raw = report_bytes_from_json(evidence.get("attestation_report"))
        supplied = []
        crls = []
        for entry in cert_chain_from_json(evidence.get("cert_chain")):
            try:
                if entry.cert_type in ("ARK", "ASK", "VCEK", "VLEK"):
                    supplied.append(amd.classify(amd.load_certificate(entry.data)))
                elif entry.cert_type == "CRL":
                    crls.append(amd.load_crl(entry.data))
            except (ValueError, EvidenceError) as exc:
                raise EvidenceError(f"SNP cert_chain {entry.cert_type} is not DER") from exc
        report, signer, chain = self.verify_report(raw, supplied, now=now, crls=crls)
        return Authenticated(
            build_claims(report, signer=signer, chain=chain),
            init_data_field=InitDataField("HOST_DATA", report.host_data),
        )

    def verify_report(
        self,
        raw: bytes,
        supplied: Sequence[amd.AmdCert] = (),
        *,
        now: float,
        crls: Sequence[x509.CertificateRevocationList] = (),
    ) -> tuple[AttestationReport, str, list[str]]:
        """Everything but the bindings: parse, chain, signature, TCB, hwID, VMPL.

        Returns the parsed report, the signer role (``VCEK``/``VLEK``) and the chain CNs.
        """
        try:
            return self._verify_report(raw, supplied, now, [*crls, *self._crls])
        except ValueError as exc:  # a lazily parsed certificate field was malformed
            raise EvidenceError(f"malformed SNP certificate: {exc}") from exc

    def _verify_report(
        self,
        raw: bytes,
        supplied: Sequence[amd.AmdCert],
        now: float,
        crls: Sequence[x509.CertificateRevocationList],
    ) -> tuple[AttestationReport, str, list[str]]:
        report = parse_report(raw)
        key = report.signing_key
        if key is SigningKey.NONE:
            raise EvidenceError("SNP report is unsigned (SIGNING_KEY = none)")
        role = key.name
        candidates = [*supplied, *self._configured]
        vek = amd.find_vek(role, candidates, report.chip_id, report.reported_tcb)
        product = report.product or (vek.product if vek else None)
        if vek is None:
            where = f"; fetch it from {kds_vcek_url(report, product)}" if product else ""
            raise EvidenceError(f"no {role} certificate for this SNP report{where}")
        if product is None or vek.product is None:
            raise EvidenceError(f"cannot tell the AMD product line of the {role} certificate")
        if vek.product is not product:
            raise EvidenceError(
                f"{role} is for {vek.product.value} but the report is from {product.value}"
            )
        if report.product is None:
            report = parse_report(raw, product=product)
        chain = amd.verify_chain(vek, candidates, product, now, crls)
        if not is_p384_key(vek.cert):
            raise EvidenceError(f"{role} public key is not ECDSA P-384")
        if not verify_report_signature(
            vek.cert, report.signed_bytes, report.signature_r, report.signature_s
        ):
            raise EvidenceError(f"SNP report signature is invalid under the {role}")
        cert_tcb = amd.cert_tcb(vek.cert, product)
        if cert_tcb.components() != report.reported_tcb.components():
            raise EvidenceError(
                f"SNP reported TCB {report.reported_tcb.components()} does not match the "
                f"{role} TCB {cert_tcb.components()}"
            )
        if role == "VCEK":
            hw = amd.hwid(vek.cert)
            if hw is None or not hmac.compare_digest(report.chip_id[: len(hw)], hw):
                raise EvidenceError("SNP CHIP_ID does not match the VCEK hwID")
        if report.vmpl > self._max_vmpl:
            raise EvidenceError(
                f"SNP report was requested at VMPL {report.vmpl}; at most {self._max_vmpl} allowed"
            )
        return report, role, chain
