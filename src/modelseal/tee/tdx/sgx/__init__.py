"""SGX (DCAP quote v3) verification, registered as TEE kind ``sgx``; shares the TDX code."""

from __future__ import annotations

from modelseal.tee.plugin import TeePlugin
from modelseal.tee.tdx.config import SgxConfig

PLUGIN = TeePlugin(
    name=SgxConfig.kind,
    attester_module=None,
    verifier_module=f"{__name__}.verifier",
    config=SgxConfig,
    tcb_checked=True,
    downloads_collateral=True,
    summary="Intel SGX enclaves (DCAP quote v3, verification only)",
)
