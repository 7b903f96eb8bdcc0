"""aa: evidence from the CoCo Attestation Agent, through guest-components' REST API.

In a Confidential Containers pod the guest's Attestation Agent (AA) holds the TEE device;
containers reach it through ``api-server-rest`` on ``127.0.0.1:8006``. This kind is an
evidence *relay*, not a kind on the wire: its attester asks the AA which TEE it runs on
(``GET /info``) and for evidence over the RCAR binding (``GET /aa/evidence``), and the
loader runs RCAR itself under the kind the AA reported (``tdx``, ``snp`` ...). The KBS
therefore verifies the evidence with that kind's own verifier and a release policy sees
that kind's claims; ``aa`` never appears in a policy, a token or ``kbs serve``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from modelseal.tee.plugin import AttesterInput, KindConfig, OptionSpec, TeePlugin

#: Where guest-components' api-server-rest listens by default.
DEFAULT_URL = "http://127.0.0.1:8006"

AA_URL = OptionSpec(
    "aa_url",
    f"base URL of guest-components' REST API server (api-server-rest) [default: {DEFAULT_URL}].",
    type="url",
)


@dataclass(frozen=True)
class AaConfig(KindConfig):
    """A relay has no verifier and so no verifier options."""

    kind: ClassVar[str] = "aa"


PLUGIN = TeePlugin(
    name=AaConfig.kind,
    attester_module=f"{__name__}.attester",
    verifier_module=None,
    config=AaConfig,
    relay=True,
    attester_inputs=(AttesterInput(AA_URL, "url"),),
    summary="evidence from the CoCo Attestation Agent (guest-components REST API)",
)
