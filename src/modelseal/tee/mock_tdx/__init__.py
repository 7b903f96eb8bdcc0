"""mock-tdx: TDX-shaped quotes and collateral from a test CA (CI and quickstart only).

``ca.MockTdxCA`` (test PKI + collateral), ``quote_builder`` (signed v4/v5 quotes),
``attester.Attester`` (evidence with a replayable CCEL), ``verifier.Verifier`` (the real
DCAP pipeline, trusted only with an explicit ``--mock-tdx-root``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from modelseal.tee.plugin import AttesterInput, KindConfig, OptionSpec, TeePlugin, option
from modelseal.tee.tdx.config import COLLATERAL

ROOT = OptionSpec("mock_tdx_root", "TEST ONLY: PEM root CA that signs test quotes.", enables=True)
CA_DIR = OptionSpec(
    "mock_tdx_dir", "TEST ONLY: the attester's test CA directory (created on demand).", type="dir"
)


@dataclass(frozen=True)
class MockTdxConfig(KindConfig):
    """The explicitly trusted test root, plus any extra DCAP collateral bundle."""

    kind: ClassVar[str] = "mock-tdx"
    root: str | None = option(ROOT)
    collateral: str | None = option(COLLATERAL)


PLUGIN = TeePlugin(
    name=MockTdxConfig.kind,
    attester_module=f"{__name__}.attester",
    verifier_module=f"{__name__}.verifier",
    config=MockTdxConfig,
    tcb_checked=True,
    test_only=True,
    testbed_module=f"{__name__}.testbed",
    attester_inputs=(AttesterInput(CA_DIR, "ca_dir"),),
    simulates_launch=True,
    transfer_types=("MOCK-TDX", "TDX"),
    summary="TDX-shaped quotes from a test CA, tests only",
)
