"""NVIDIA GPU attester through NVML (``nvidia-ml-py``'s ``pynvml``): inside the CVM.

For each GPU: ``nvmlDeviceGetConfComputeGpuAttestationReport`` with the 32-byte nonce
(the first 32 bytes of the binding, zero-padded, as guest-components does), the device
certificate chain from ``nvmlDeviceGetConfComputeGpuCertificate``, the UUID; the
confidential-computing state (``nvmlSystemGetConfComputeState``: on, developer tools,
off) is reported with each device. The evidence is Trustee's device-evidence JSON. A
machine whose GPUs are not in CC mode, or without NVML, is an ``AttestationError``:
there is nothing to attest.
"""

from __future__ import annotations

import importlib
from typing import Any, ClassVar, Final

from modelseal.errors import AttestationError
from modelseal.tee.nvidia.evidence import MAX_DEVICES, build_device, build_evidence
from modelseal.tee.nvidia.report import MAX_REPORT, NONCE_SIZE

#: A PEM chain of five P-384 certificates is about 5 KiB.
MAX_CHAIN: Final = 64 * 1024


class Attester:
    """GPU evidence of every GPU NVML sees (``nvml``: a module with pynvml's API)."""

    tee: ClassVar[str] = "nvidia"

    def __init__(self, *, nvml: Any = None) -> None:
        self._nvml = nvml

    def _module(self) -> Any:
        if self._nvml is not None:
            return self._nvml
        try:
            return importlib.import_module("pynvml")
        except ImportError:
            raise AttestationError(
                "NVIDIA GPU attestation needs NVML's Python bindings: "
                "pip install 'modelseal[nvidia]'"
            ) from None

    def evidence(self, report_data: bytes) -> dict[str, Any]:
        nvml = self._module()
        nonce = report_data[:NONCE_SIZE].ljust(NONCE_SIZE, b"\x00")
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as exc:
            raise AttestationError(f"NVML is not available: {exc}") from None
        try:
            return build_evidence(self._devices(nvml, nonce))
        except nvml.NVMLError as exc:
            raise AttestationError(f"NVML GPU attestation failed: {exc}") from None
        finally:
            nvml.nvmlShutdown()

    def _devices(self, nvml: Any, nonce: bytes) -> list[dict[str, Any]]:
        state = nvml.nvmlSystemGetConfComputeState()
        if not state.ccFeature:
            raise AttestationError("GPU confidential computing is off (nvidia-smi conf-compute)")
        mode = "devtools" if state.devToolsMode else "on"
        count = nvml.nvmlDeviceGetCount()
        if count < 1:
            raise AttestationError("NVML sees no GPU")
        if count > MAX_DEVICES:
            raise AttestationError(f"NVML reports {count} GPUs; at most {MAX_DEVICES} attest")
        devices = []
        for index in range(count):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            report = nvml.nvmlDeviceGetConfComputeGpuAttestationReport(handle, nonce)
            raw = _bounded(report.attestationReport, report.attestationReportSize, MAX_REPORT)
            cert = nvml.nvmlDeviceGetConfComputeGpuCertificate(handle)
            chain = _bounded(cert.attestationCertChain, cert.attestationCertChainSize, MAX_CHAIN)
            uuid = nvml.nvmlDeviceGetUUID(handle)
            if isinstance(uuid, bytes):
                uuid = uuid.decode("ascii", "replace")
            devices.append(build_device(raw, chain, uuid=str(uuid)[:128], cc_mode=mode))
        return devices


def _bounded(buffer: Any, size: int, limit: int) -> bytes:
    """The first ``size`` bytes NVML filled in, refusing sizes beyond the buffer or cap."""
    data = bytes(buffer)
    if not 0 < size <= min(len(data), limit):
        raise AttestationError(f"NVML returned an implausible size {size}")
    return data[:size]
