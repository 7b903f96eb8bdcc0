"""KBS-side TDX verifier: Intel production root, collateral bundle / PCCS (see dcap_verifier)."""

from __future__ import annotations

from typing import ClassVar

from modelseal.errors import UnsupportedTee
from modelseal.tee.plugin import KindConfig
from modelseal.tee.tdx.collateral import CollateralStore
from modelseal.tee.tdx.config import DcapConfig
from modelseal.tee.tdx.dcap_verifier import DcapQuoteVerifier


def collateral_store(config: KindConfig) -> CollateralStore:
    """Collateral from ``config.collateral`` (file/dir), ``pccs_url`` and ``cache_dir``."""
    if not isinstance(config, DcapConfig):
        raise UnsupportedTee(f"a {config.kind} config carries no DCAP collateral settings")
    return CollateralStore(
        bundle=config.collateral, pccs_url=config.pccs_url, cache_dir=config.cache_dir
    )


class Verifier(DcapQuoteVerifier):
    """TDX quotes v4/v5 chained to Intel's SGX Root CA (bundled with dcap-qvl)."""

    tee: ClassVar[str] = "tdx"
    quote_tee: ClassVar[str] = "TDX"

    @classmethod
    def from_config(cls, config: KindConfig) -> Verifier:
        return cls(collateral_store(config))
