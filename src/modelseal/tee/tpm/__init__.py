"""TPM 2.0: tpm2-tools attester (quote over PCRs) and the TPMS_ATTEST verifier."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from modelseal.tee.plugin import Detection, KindConfig, OptionSpec, TeePlugin, option

TRUSTED_AKS = OptionSpec(
    "tpm_trusted_aks",
    "file or directory of trusted attestation keys / AK CA certificates.",
    required=True,
)


@dataclass(frozen=True)
class TpmConfig(KindConfig):
    """The attestation keys (or their CAs) whose quotes are trusted."""

    kind: ClassVar[str] = "tpm"
    trusted_aks: str | None = option(TRUSTED_AKS)


PLUGIN = TeePlugin(
    name=TpmConfig.kind,
    attester_module=f"{__name__}.attester",
    verifier_module=f"{__name__}.verifier",
    config=TpmConfig,
    detection=Detection(devices=("dev/tpmrm0",), fallback=True),
    summary="TPM 2.0 quotes over PCRs",
)
