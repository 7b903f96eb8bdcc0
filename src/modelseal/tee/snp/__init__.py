"""AMD SEV-SNP: configfs-tsm / /dev/sev-guest attester and the VCEK/VLEK verifier."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from modelseal.tee.plugin import Detection, KindConfig, OptionSpec, TeePlugin, option

CERTS = OptionSpec(
    "snp_certs",
    "directory or file of VCEK/VLEK/ASK/ARK certificates (and CRLs).",
)


@dataclass(frozen=True)
class SnpConfig(KindConfig):
    """Endorsement certificates for reports whose evidence carries none."""

    kind: ClassVar[str] = "snp"
    certs: str | None = option(CERTS)


PLUGIN = TeePlugin(
    name=SnpConfig.kind,
    attester_module=f"{__name__}.attester",
    verifier_module=f"{__name__}.verifier",
    config=SnpConfig,
    tcb_checked=True,
    detection=Detection(devices=("dev/sev-guest",), tsm_provider="sev_guest"),
    summary="AMD SEV-SNP (VCEK/VLEK-signed reports)",
)
