"""Where the KBS runs a verifier: on the event loop unless verifying may wait on I/O."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelseal.errors import UnsupportedTee
from modelseal.kbs.attestation import AttestationService
from modelseal.tee import registry
from modelseal.tee.mock_tdx.ca import MockTdxCA
from modelseal.tee.registry import build_configs


def test_local_material_verifies_inline_a_pccs_url_goes_to_a_thread(
    tmp_path: Path, shared_vectors: Path
) -> None:
    ca = MockTdxCA.create(tmp_path / "ca")
    local = AttestationService(
        build_configs(
            {
                "insecure_allow_sample": True,
                "mock_tdx_root": str(ca.root_pem_path),
                "collateral": str(shared_vectors / "tdx"),
            }
        )
    )
    for kind in ("sample", "mock-tdx", "tdx"):
        assert local.is_inline(kind), kind
    # a PCS/PCCS URL means a collateral miss downloads: never on the event loop
    fetching = AttestationService(
        build_configs({"collateral": str(shared_vectors / "tdx"), "pccs_url": "http://127.0.0.1:9"})
    )
    assert not fetching.is_inline("tdx")


def test_an_evidence_relay_is_no_kind_a_kbs_accepts() -> None:
    service = AttestationService(build_configs({}))
    relays = [name for name, p in registry.PLUGINS.items() if p.relay]
    assert relays
    for name in [*relays, "no-such-kind"]:
        with pytest.raises(UnsupportedTee):
            service.check_allowed(name)
