"""A fake NVML (pynvml's API) backed by test GPUs: no GPU is here, the attester's NVML
calls are answered with reports a :class:`MockGpu` signs for the nonce it is given."""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pynvml

from tests.unit.tee.nvidia.mockgpu import MockGpu


class NVMLError(Exception):
    """pynvml's error type (the attester catches ``nvml.NVMLError``)."""


@dataclass
class FakeNvml:
    """GPUs in CC mode ``on`` unless ``cc_feature``/``dev_tools`` say otherwise;
    ``measurements`` (block -> value) are changed in every report, ``fail`` makes
    ``nvmlInit`` fail as on a host without the driver."""

    gpus: Sequence[MockGpu]
    cc_feature: int = 1
    dev_tools: int = 0
    measurements: dict[int, bytes] = field(default_factory=dict)
    fail: bool = False
    NVMLError: type[Exception] = NVMLError
    calls: list[str] = field(default_factory=list)

    def nvmlInit(self) -> None:
        self.calls.append("init")
        if self.fail:
            raise NVMLError("NVML Shared Library Not Found")

    def nvmlShutdown(self) -> None:
        self.calls.append("shutdown")

    def nvmlSystemGetConfComputeState(self) -> Any:
        return SimpleNamespace(
            environment=1, ccFeature=self.cc_feature, devToolsMode=self.dev_tools
        )

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> MockGpu:
        return self.gpus[index]

    def nvmlDeviceGetUUID(self, gpu: MockGpu) -> str:
        return f"GPU-{self.gpus.index(gpu):08d}-test"

    def nvmlDeviceGetConfComputeGpuAttestationReport(self, gpu: MockGpu, nonce: bytes) -> Any:
        report = pynvml.c_nvmlConfComputeGpuAttestationReport_t()
        raw = gpu.report(bytes(nonce), measurements=self.measurements)
        ctypes.memmove(report.attestationReport, raw, len(raw))
        report.attestationReportSize = len(raw)
        return report

    def nvmlDeviceGetConfComputeGpuCertificate(self, gpu: MockGpu) -> Any:
        cert = pynvml.c_nvmlConfComputeGpuCertificate_t()
        chain = gpu.chain_pem
        ctypes.memmove(cert.attestationCertChain, chain, len(chain))
        cert.attestationCertChainSize = len(chain)
        return cert
