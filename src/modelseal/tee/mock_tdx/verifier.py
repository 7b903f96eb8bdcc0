"""mock-tdx verifier: the full TDX/DCAP pipeline, anchored at an explicitly given test root.

Refused (UnsupportedTee) unless ``MockTdxConfig.root`` names the test root PEM:
a KBS never trusts the mock by accident. Collateral: ``collateral.json`` next to the root
(the CA directory) together with ``MockTdxConfig.collateral`` when set. Claims are TDX
claims with ``tee = "mock-tdx"`` and ``extra.mock = true``, so a release policy must name
``mock-tdx`` explicitly to accept them.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from modelseal.crypto.x509_pem import pem_to_der
from modelseal.errors import ConfigError, UnsupportedTee
from modelseal.tee.mock_tdx import ROOT, MockTdxConfig
from modelseal.tee.plugin import KindConfig
from modelseal.tee.tdx.collateral import CollateralStore
from modelseal.tee.tdx.dcap_verifier import DcapQuoteVerifier


class Verifier(DcapQuoteVerifier):
    """The real TDX pipeline anchored at an explicitly configured test root, never Intel's."""

    tee: ClassVar[str] = "mock-tdx"
    quote_tee: ClassVar[str] = "TDX"
    extra_claims: ClassVar[Mapping[str, Any]] = {"mock": True}

    @classmethod
    def from_config(cls, config: KindConfig) -> Verifier:
        if not isinstance(config, MockTdxConfig) or not config.root:
            raise UnsupportedTee(
                "mock-tdx is a test TEE: it is trusted only when its test root CA is "
                f"configured explicitly (kbs serve {ROOT.flag} PEM)"
            )
        root = Path(config.root)
        try:
            root_der = pem_to_der(root.read_bytes())
        except OSError as exc:
            raise ConfigError(f"cannot read the mock-tdx root {root}: {exc}") from exc
        # The CA directory's collateral, plus any configured bundle (sets are picked by
        # FMSPC, so a real TDX bundle next to the mock one does no harm).
        bundles = [p for p in (root.parent / "collateral.json",) if p.is_file()]
        if config.collateral:
            bundles.append(Path(config.collateral))
        return cls(CollateralStore(bundle=bundles), root_ca_der=root_der)
