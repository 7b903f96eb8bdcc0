"""Azure TDX confidential VMs: HCL report + TD quote + vTPM quote (Trustee ``az-tdx-vtpm``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from modelseal.tee.azure.options import ATTESTER_INPUTS
from modelseal.tee.plugin import TeePlugin
from modelseal.tee.tdx.config import DcapConfig


@dataclass(frozen=True)
class AzTdxVtpmConfig(DcapConfig):
    """DCAP collateral for the TD quote, read the same way as for ``tdx``."""

    kind: ClassVar[str] = "az-tdx-vtpm"


PLUGIN = TeePlugin(
    name=AzTdxVtpmConfig.kind,
    attester_module=f"{__name__}.attester",
    verifier_module=f"{__name__}.verifier",
    config=AzTdxVtpmConfig,
    tcb_checked=True,
    downloads_collateral=True,
    attester_inputs=ATTESTER_INPUTS,
    summary="Azure TDX confidential VMs (HCL report + TD quote + vTPM quote)",
    aliases=("azure",),
)
