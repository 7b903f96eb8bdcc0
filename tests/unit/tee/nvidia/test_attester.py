"""The NVML attester against a fake NVML: evidence the verifier accepts, and refusals."""

from __future__ import annotations

import sys
import time

import pytest

from modelseal.errors import AttestationError, EvidenceError, UnsupportedTee
from modelseal.tee import registry
from modelseal.tee.nvidia.attester import Attester
from modelseal.tee.nvidia.verifier import Verifier
from tests.unit.tee.nvidia.fakenvml import FakeNvml
from tests.unit.tee.nvidia.mockgpu import MockGpu

BINDING = bytes(range(48))


@pytest.fixture(scope="module")
def gpu() -> MockGpu:
    return MockGpu()


def test_two_gpus_attest_and_verify(gpu: MockGpu) -> None:
    other = MockGpu()
    nvml = FakeNvml([gpu, other])
    evidence = Attester(nvml=nvml).evidence(BINDING)
    assert nvml.calls == ["init", "shutdown"]
    parts = Verifier.split_devices(evidence)
    assert len(parts) == 2
    for part, device in zip(parts, (gpu, other), strict=True):
        claims = Verifier(device_root=device.root).verify(
            part, expected_report_data=BINDING, now=time.time()
        )
        assert claims.report_data == BINDING[:32]
        assert claims.extra["cc_mode"] == "on"
        assert claims.extra["uuid"].startswith("GPU-")


def test_short_binding_is_zero_padded(gpu: MockGpu) -> None:
    evidence = Attester(nvml=FakeNvml([gpu])).evidence(b"\x01\x02")
    assert Verifier.own_report_data(evidence) == b"\x01\x02" + bytes(30)


def test_devtools_mode_is_reported(gpu: MockGpu) -> None:
    evidence = Attester(nvml=FakeNvml([gpu], dev_tools=1)).evidence(BINDING)
    assert evidence["device_evidence_list"][0]["cc_mode"] == "devtools"


@pytest.mark.parametrize(
    ("nvml", "reason"),
    [
        (lambda g: FakeNvml([g], cc_feature=0), "confidential computing is off"),
        (lambda g: FakeNvml([]), "no GPU"),
        (lambda g: FakeNvml([g], fail=True), "NVML is not available"),
    ],
)
def test_refusals(gpu: MockGpu, nvml: object, reason: str) -> None:
    with pytest.raises(AttestationError, match=reason):
        Attester(nvml=nvml(gpu)).evidence(BINDING)  # type: ignore[operator]


def test_another_sessions_binding_is_refused(gpu: MockGpu) -> None:
    evidence = Attester(nvml=FakeNvml([gpu])).evidence(BINDING)
    other = bytearray(BINDING)
    other[31] ^= 1
    with pytest.raises(EvidenceError, match="binding mismatch"):
        Verifier(device_root=gpu.root).verify(
            evidence, expected_report_data=bytes(other), now=time.time()
        )


def test_the_registry_builds_it_with_pynvml(gpu: MockGpu, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without an explicit module the attester imports ``pynvml`` (here: the fake)."""
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml([gpu]))
    evidence = registry.attester_for("nvidia").evidence(BINDING)
    assert len(evidence["device_evidence_list"]) == 1


def test_composite_kinds() -> None:
    assert registry.split_composite("mock-tdx+nvidia") == ("mock-tdx", ("nvidia",))
    assert registry.split_composite("tdx") == ("tdx", ())
    for bad in ("nvidia+tdx", "tdx+snp", "tdx+nvidia+nvidia", "nvidia", "tdx+gpu"):
        with pytest.raises(UnsupportedTee, match=r"device|TEE kind"):
            registry.split_composite(bad)
