"""Intel TDX: configfs-tsm attester (in the TD) and DCAP verifier (KBS side).

Modules: ``quote`` (strict quote parser), ``evidence`` (Trustee evidence JSON),
``dcap`` (dcap-qvl wrapper), ``collateral`` (bundle/PCCS/cache), ``claims``,
``dcap_verifier`` (the pipeline), ``verifier``, ``attester``; ``sgx`` reuses them.
"""

from __future__ import annotations

from modelseal.tee.plugin import Detection, TeePlugin
from modelseal.tee.tdx.config import TdxConfig

PLUGIN = TeePlugin(
    name=TdxConfig.kind,
    attester_module=f"{__name__}.attester",
    verifier_module=f"{__name__}.verifier",
    config=TdxConfig,
    tcb_checked=True,
    downloads_collateral=True,
    detection=Detection(devices=("dev/tdx_guest",), tsm_provider="tdx_guest"),
    transfer_types=("TDX",),
    summary="Intel TDX (DCAP quotes)",
)
