"""Attester and Verifier contracts shared by every TEE kind (DESIGN.md section 6).

Evidence travels as the JSON value of Trustee's ``tee-evidence.primary_evidence`` so the
KBS stays wire-compatible with CoCo guests; each kind documents its own shape.
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol

from modelseal.protocol.claims import Claims

#: JSON value of ``primary_evidence`` as sent on the wire.
EvidenceJSON = Any


class Attester(Protocol):
    """Produces evidence inside a TEE. Raises ``AttestationError``/``UnsupportedTee``."""

    tee: ClassVar[str]

    def evidence(self, report_data: bytes) -> EvidenceJSON:
        """Evidence whose user-data field carries ``report_data`` (zero-padded)."""
        ...


class Verifier(Protocol):
    """Verifies evidence on the KBS side. Raises ``EvidenceError`` with a precise reason."""

    tee: ClassVar[str]

    def verify(
        self,
        evidence: EvidenceJSON,
        *,
        expected_report_data: bytes,
        now: float,
        init_data: bytes | None = None,
    ) -> Claims:
        """Check signatures, chains, collateral, TCB and binding; return typed claims.

        ``expected_report_data`` is the binding digest (unpadded); the verifier pads it to
        its field size. ``init_data`` is the raw init-data document the TEE claims to have
        been launched with; the verifier compares its digest to the launch-time field.
        ``now`` is the verification time (Unix seconds) for certificate and collateral
        validity.
        """
        ...


def pad_report_data(data: bytes, size: int = 64) -> bytes:
    """Zero-pad (or truncate) ``data`` to a TEE's report-data field, as Trustee does."""
    return data[:size].ljust(size, b"\x00")


class VerifierConfig:
    """KBS-side settings every verifier may read; each kind uses the fields it needs.

    Kept deliberately flat so ``kbs serve`` flags map one-to-one onto it.
    """

    def __init__(
        self,
        *,
        allow_sample: bool = False,
        collateral: str | None = None,
        pccs_url: str | None = None,
        cache_dir: str | None = None,
        mock_tdx_root: str | None = None,
        snp_certs: str | None = None,
        tpm_trusted_aks: str | None = None,
    ) -> None:
        self.allow_sample = allow_sample
        #: TDX/SGX: offline collateral file or bundle directory (dcap-qvl JSON).
        self.collateral = collateral
        #: TDX/SGX: PCS/PCCS base URL used when collateral is not in the bundle.
        self.pccs_url = pccs_url
        #: Where fetched collateral and certificates are cached.
        self.cache_dir = cache_dir
        #: PEM file of the mock-tdx test root CA; mock-tdx is refused unless set.
        self.mock_tdx_root = mock_tdx_root
        #: SNP: directory of VCEK/VLEK/ASK/ARK certificates.
        self.snp_certs = snp_certs
        #: TPM: directory or file of trusted AK public keys / certificates.
        self.tpm_trusted_aks = tpm_trusted_aks
