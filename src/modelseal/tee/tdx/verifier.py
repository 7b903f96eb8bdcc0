"""KBS-side TDX verifier: Intel production root, collateral bundle / PCCS (see dcap_verifier)."""

from __future__ import annotations

from typing import ClassVar

from modelseal.tee.base import VerifierConfig
from modelseal.tee.tdx.collateral import CollateralStore
from modelseal.tee.tdx.dcap_verifier import DcapQuoteVerifier


def collateral_store(config: VerifierConfig) -> CollateralStore:
    """Collateral from ``config.collateral`` (file/dir), ``pccs_url`` and ``cache_dir``."""
    return CollateralStore(
        bundle=config.collateral, pccs_url=config.pccs_url, cache_dir=config.cache_dir
    )


class Verifier(DcapQuoteVerifier):
    """TDX quotes v4/v5 chained to Intel's SGX Root CA (bundled with dcap-qvl)."""

    tee: ClassVar[str] = "tdx"
    quote_tee: ClassVar[str] = "TDX"

    @classmethod
    def from_config(cls, config: VerifierConfig) -> Verifier:
        return cls(collateral_store(config))
