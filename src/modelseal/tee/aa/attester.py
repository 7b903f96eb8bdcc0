"""The aa attester: evidence from the CoCo Attestation Agent over api-server-rest.

On construction it asks ``GET /info`` which TEE the AA runs on and maps the AA's name
(Trustee ``kbs-types`` ``Tee``, serialized in lower case: ``tdx``, ``snp``,
``azsnpvtpm`` ...) to a modelseal kind (:attr:`Attester.evidence_kind`); RCAR then names
that kind, so the KBS verifies the evidence with its own verifier. The AA pads the report
data to the TEE's field itself (``report_data.resize(64, 0)`` for TDX), exactly as our
attesters do.
"""

from __future__ import annotations

from typing import Any, ClassVar

from modelseal.errors import ConfigError, UnsupportedTee
from modelseal.tee.aa import DEFAULT_URL
from modelseal.tee.aa.rest import ApiServerClient

#: kbs-types ``Tee`` names whose modelseal kind is spelled differently
_AA_TEE_NAMES = {"azsnpvtpm": "az-snp-vtpm", "aztdxvtpm": "az-tdx-vtpm"}


def kind_of_aa_tee(name: str) -> str:
    """The modelseal kind of a TEE name the AA reports (``azsnpvtpm`` → ``az-snp-vtpm``)."""
    return _AA_TEE_NAMES.get(name, name)


class Attester:
    """Relays the Attestation Agent's evidence; ``evidence_kind`` is the AA's TEE."""

    tee: ClassVar[str] = "aa"

    def __init__(self, url: str | None = None, *, timeout: float = 30.0) -> None:
        # the CLI (--aa-url / MODELSEAL_AA_URL) and LoaderSettings.from_env pass it in
        base = url or DEFAULT_URL
        self.client = ApiServerClient(str(base), timeout=timeout)
        info = self.client.info()
        reported = info.get("tee")
        if not isinstance(reported, str) or not reported:
            self.client.close()
            raise ConfigError(
                f"{self.client.base_url} reports no TEE: api-server-rest must run with "
                "--features attestation or all"
            )
        if len(reported) > 64 or not reported.isprintable():
            self.client.close()
            raise UnsupportedTee("the Attestation Agent reports an unreadable TEE name")
        #: the kind of the evidence the AA produces (what the KBS verifies)
        self.evidence_kind = kind_of_aa_tee(reported)

    def evidence(self, report_data: bytes) -> Any:
        return self.client.evidence(report_data)

    def close(self) -> None:
        self.client.close()
