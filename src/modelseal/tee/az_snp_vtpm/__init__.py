"""Azure SEV-SNP confidential VMs: HCL report + vTPM quote (Trustee ``az-snp-vtpm``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from modelseal.tee.azure.options import ATTESTER_INPUTS
from modelseal.tee.plugin import KindConfig, TeePlugin, option
from modelseal.tee.snp import CERTS


@dataclass(frozen=True)
class AzSnpVtpmConfig(KindConfig):
    """AMD certificates (ASK/ARK, CRLs) beyond the pinned roots, as for ``snp``."""

    kind: ClassVar[str] = "az-snp-vtpm"
    certs: str | None = option(CERTS)


PLUGIN = TeePlugin(
    name=AzSnpVtpmConfig.kind,
    attester_module=f"{__name__}.attester",
    verifier_module=f"{__name__}.verifier",
    config=AzSnpVtpmConfig,
    tcb_checked=True,
    attester_inputs=ATTESTER_INPUTS,
    summary="Azure SEV-SNP confidential VMs (HCL report + vTPM quote)",
    aliases=("azure",),
)
