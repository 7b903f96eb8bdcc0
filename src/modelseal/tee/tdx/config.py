"""DCAP verifier configuration, shared by TDX and SGX (and read in part by mock-tdx)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from modelseal.tee.plugin import KindConfig, OptionSpec, option

COLLATERAL = OptionSpec(
    "collateral",
    "offline verification material: dcap-qvl collateral file or bundle directory (TDX, "
    "SGX); the device certificate chain (PEM) of a bare GPU report (NVIDIA).",
    catch_all=True,
)
PCCS_URL = OptionSpec(
    "pccs_url", "Intel PCS/PCCS base URL for collateral not in the bundle.", type="url"
)
CACHE_DIR = OptionSpec("cache_dir", "where downloaded collateral is cached.", type="dir")


@dataclass(frozen=True)
class DcapConfig(KindConfig):
    """Where DCAP collateral comes from: a bundle, a PCCS, and a download cache."""

    collateral: str | None = option(COLLATERAL)
    pccs_url: str | None = option(PCCS_URL)
    cache_dir: str | None = option(CACHE_DIR)


@dataclass(frozen=True)
class TdxConfig(DcapConfig):
    """TDX quotes chained to Intel's root, with DCAP collateral."""

    kind: ClassVar[str] = "tdx"


@dataclass(frozen=True)
class SgxConfig(DcapConfig):
    """SGX quotes share the DCAP collateral machinery with TDX."""

    kind: ClassVar[str] = "sgx"
