"""NVIDIA Hopper GPU report verification latency (warm), for ``docs/benchmarks.md``.

Trustee-shaped device evidence with the real H100 reports and chains from
``tests/vectors/attestation/nvidia``: JSON decode of the report, strict SPDM parse, device
chain (cached after the first verification of the same chain, as a running KBS sees the
same GPU again), FWID, ECDSA P-384 signature, nonce. ``cold chain`` re-validates the chain
every time (a new verifier per run). Target: <= 5 ms warm.

    python -m bench.nvidia_bench
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NV = ROOT / "tests" / "vectors" / "attestation" / "nvidia" / "trustee"
RUNS = 200
NOW = 1748736000.0


def _median_ms(fn: Callable[[], object], runs: int = RUNS) -> float:
    fn()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def measure() -> list[tuple[str, float]]:
    from modelseal.tee.nvidia.evidence import build_device, build_evidence
    from modelseal.tee.nvidia.verifier import Verifier

    out = []
    for name, report, chain in [
        ("nvidia (sample H100)", "hopperAttestationReport.txt", "hopper_cert_chain_case1.txt"),
        ("nvidia (CoCo H100)", "hopper_coco_report1.txt", "hopper_coco_certs1.txt"),
    ]:
        raw = bytes.fromhex((NV / report).read_text().strip())
        evidence = json.loads(
            json.dumps(build_evidence([build_device(raw, (NV / chain).read_bytes())]))
        )
        nonce = raw[4:36]
        warm = Verifier()

        def run(verifier: Verifier, ev: object = evidence, nonce: bytes = nonce) -> object:
            return verifier.verify(ev, expected_report_data=nonce, now=NOW)

        out.append((f"{name} warm", _median_ms(lambda run=run, warm=warm: run(warm))))
        out.append((f"{name} cold chain", _median_ms(lambda run=run: run(Verifier()), runs=50)))
    return out


def main() -> None:
    import os
    import platform

    import cryptography

    from bench.report import write_section

    load = os.getloadavg()[0]
    rows = measure()
    lines = [
        "Command: `python -m bench nvidia_bench` "
        f"(Python {platform.python_version()}, cryptography {cryptography.__version__}, "
        f"{os.cpu_count()} vCPU, load average {load:.1f} at the start). Median of "
        f"{RUNS} runs (50 for cold chains) of `Verifier.verify` on Trustee-shaped device "
        "evidence with the real H100 reports: JSON report decode, strict SPDM parse, FWID, "
        "ECDSA P-384 signature, nonce. **warm**: the device chain was verified before (a "
        "running KBS seeing the same GPU again; target <= 5 ms); **cold chain**: a new "
        "verifier each run, so the five-certificate chain is path-validated too.",
        "",
        "| evidence | median (ms) |",
        "| --- | ---: |",
        *(f"| {label} | {ms:.3f} |" for label, ms in rows),
    ]
    write_section("NVIDIA GPU evidence verification", "\n".join(lines) + "\n")
    for label, ms in rows:
        print(f"{label:36s} {ms:8.3f} ms")


if __name__ == "__main__":
    main()
