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


def test_device_evidence_next_to_a_dcap_collateral_directory(
    tmp_path: Path, shared_vectors: Path
) -> None:
    """``--collateral DIR`` is DCAP material: the GPU verifier ignores it, and device
    evidence is split per GPU, verified against the device binding."""
    import json

    from modelseal.crypto.x509_pem import cert_pem
    from modelseal.errors import EvidenceError
    from modelseal.tee.nvidia.attester import Attester
    from tests.unit.tee.nvidia.fakenvml import FakeNvml
    from tests.unit.tee.nvidia.mockgpu import MockGpu

    gpu = MockGpu()
    (tmp_path / "gpu-root.pem").write_bytes(cert_pem(gpu.root))
    service = AttestationService(
        build_configs(
            {
                "collateral": str(shared_vectors / "tdx"),
                "nvidia_device_root": str(tmp_path / "gpu-root.pem"),
            }
        )
    )
    binding = bytes(range(48))
    doc = {"nvidia": Attester(nvml=FakeNvml([gpu, gpu])).evidence(binding)}
    devices = service.verify_devices(json.dumps(doc), expected_report_data=binding)
    assert [d.tee for d in devices] == ["nvidia", "nvidia"]
    for bad, reason in [
        ("[]", "JSON object"),
        ("{", "not valid JSON"),
        (json.dumps({"tdx": {}}), "not a device TEE kind"),
        (json.dumps({"nvidia": {"device_evidence_list": [{}] * 17}}), "more than 16"),
    ]:
        with pytest.raises(EvidenceError, match=reason):
            service.verify_devices(bad, expected_report_data=binding)
    with pytest.raises(EvidenceError, match="binding mismatch"):
        service.verify_devices(json.dumps(doc), expected_report_data=bytes(48))
