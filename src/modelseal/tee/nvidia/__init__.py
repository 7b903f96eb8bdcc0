"""NVIDIA Hopper GPU confidential computing: NVML attester and local SPDM verifier.

A GPU is a device TEE: its evidence travels as *additional* evidence next to a CPU TEE's
(Trustee's composite format, bound to the same session), or alone to ``evidence verify``.
Modules: ``report`` (strict SPDM GET_MEASUREMENTS parser), ``certs`` (device and RIM
chains to pinned NVIDIA roots, CRLs), ``rim`` (signed SWID reference manifests),
``evidence`` (Trustee's device-evidence JSON), ``verifier``, ``attester`` (NVML).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from modelseal.tee.plugin import KindConfig, OptionSpec, TeePlugin, option
from modelseal.tee.tdx.config import COLLATERAL

RIM = OptionSpec(
    "rim",
    "file or directory of NVIDIA driver/VBIOS RIMs (signed SWID tags, read offline); "
    "a report whose versions a RIM covers must match its measurements.",
)
RIM_ROOT = OptionSpec(
    "nvidia_rim_root",
    "PEM root the RIM signing chains must end at (default: NVIDIA's pinned CoRIM root).",
)
DEVICE_ROOT = OptionSpec(
    "nvidia_device_root",
    "PEM root the GPU device chains must end at instead of NVIDIA's pinned Device Identity "
    "CA (labs and tests with their own device CA).",
)
REVOCATION = OptionSpec(
    "nvidia_revocation",
    "offline bundle of CRLs and OCSP responses (file or directory) for the GPU device and "
    "RIM certificate chains.",
)


@dataclass(frozen=True)
class NvidiaConfig(KindConfig):
    """Reference manifests, their root, revocation lists, and a chain for bare reports."""

    kind: ClassVar[str] = "nvidia"
    collateral: str | None = option(COLLATERAL)
    rim: str | None = option(RIM)
    rim_root: str | None = option(RIM_ROOT)
    device_root: str | None = option(DEVICE_ROOT)
    revocation: str | None = option(REVOCATION)


PLUGIN = TeePlugin(
    name=NvidiaConfig.kind,
    attester_module=f"{__name__}.attester",
    verifier_module=f"{__name__}.verifier",
    config=NvidiaConfig,
    device=True,
    summary="NVIDIA Hopper GPU (SPDM measurement reports, device evidence)",
)
