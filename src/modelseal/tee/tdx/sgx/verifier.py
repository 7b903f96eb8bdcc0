"""KBS-side SGX verifier: DCAP quote v3 with the same collateral machinery as TDX.

Claims: ``mr_enclave``, ``mr_signer``, ``isv_prod_id``, ``isv_svn``; debug from the
enclave's ATTRIBUTES.DEBUG (dcap-qvl rejects debug enclaves outright).
"""

from __future__ import annotations

from typing import ClassVar

from modelseal.tee.plugin import KindConfig
from modelseal.tee.tdx.dcap_verifier import DcapQuoteVerifier
from modelseal.tee.tdx.verifier import collateral_store


class Verifier(DcapQuoteVerifier):
    """SGX quotes share the DCAP pipeline; only the quote's TEE type and claims differ."""

    tee: ClassVar[str] = "sgx"
    quote_tee: ClassVar[str] = "SGX"

    @classmethod
    def from_config(cls, config: KindConfig) -> Verifier:
        return cls(collateral_store(config))
