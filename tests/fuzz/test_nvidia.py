"""Fuzz targets: NVIDIA Hopper evidence (the SPDM GET_MEASUREMENTS report raw, the device
chain, and Trustee's device-evidence JSON) up to the full verifier, mutating the real H100
reports and chains."""

from __future__ import annotations

import json
from functools import cache
from typing import Any

import pytest

from modelseal.errors import EvidenceError
from modelseal.tee.nvidia.evidence import build_device, build_evidence
from modelseal.tee.nvidia.report import parse_report
from modelseal.tee.nvidia.verifier import Verifier
from tests.fuzz.harness import Target, json_input, json_mutated, read_vectors, require, run, shared

#: inside the validity of every certificate of both chains
NOW = 1748736000.0

PAIRS = [
    (shared("nvidia", "trustee", report), shared("nvidia", "trustee", chain))
    for report, chain in [
        ("hopperAttestationReport.txt", "hopper_cert_chain_case1.txt"),
        ("hopper_coco_report1.txt", "hopper_coco_certs1.txt"),
    ]
]


@cache
def _pairs() -> tuple[tuple[bytes, bytes], ...]:
    return tuple(
        (bytes.fromhex(r.read_text().strip()), c.read_bytes())
        for r, c in PAIRS
        if r.is_file() and c.is_file()
    )


def _verify(evidence: Any) -> object:
    """The KBS's path: JSON evidence bound to the nonce its report itself carries."""
    try:
        expected = Verifier.own_report_data(evidence) or bytes(32)
    except EvidenceError:  # the verifier itself judges such input
        expected = bytes(32)
    return Verifier().verify(evidence, expected_report_data=expected, now=NOW)


def _verify_report(data: bytes) -> object:
    chain = max(_pairs(), key=lambda p: _common_prefix(p[0], data))[1]
    return _verify(build_evidence([build_device(data, chain)]))


def _verify_chain(data: bytes) -> object:
    report = max(_pairs(), key=lambda p: _common_prefix(p[1], data))[0]
    return _verify(build_evidence([build_device(report, data)]))


def _common_prefix(a: bytes, b: bytes) -> int:
    return next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )


def _docs() -> list[Any]:
    return [
        json.loads(json.dumps(build_evidence([build_device(r, c, uuid="GPU-0", cc_mode="on")])))
        for r, c in _pairs()
    ]


RIM = shared("nvidia", "nvtrust", "1010_0200_882_960074001A_PROD.swidtag")
#: the real RIM's signer is valid then
RIM_NOW = 1748736000.0


def _verify_rim(data: bytes) -> object:
    """A (mutated) real RIM through the whole RIM check against the pinned CoRIM root."""
    from pathlib import Path

    from modelseal.tee.nvidia.certs import pinned
    from modelseal.tee.nvidia.rim import RimFile, verify_rim

    return verify_rim(
        RimFile(Path("fuzz.swidtag"), data, "96.00.74.00.1a"), pinned("rim_root"), now=RIM_NOW
    )


TARGETS = [
    Target("nvidia-report", parse_report, require(lambda: [r for r, _ in _pairs()])),
    Target("nvidia-verify-report", _verify_report, require(lambda: [r for r, _ in _pairs()])),
    Target("nvidia-verify-chain", _verify_chain, require(lambda: [c for _, c in _pairs()])),
    Target(
        "nvidia-evidence-json",
        json_input(_verify),
        require(lambda: [json.dumps(d).encode() for d in _docs()]),
        extra=lambda: json_mutated(_docs()),
    ),
    Target("nvidia-rim", _verify_rim, require(lambda: read_vectors(RIM)), quick_examples=20),
    Target(
        "nvidia-evidence-file",
        lambda raw: _verify(Verifier.evidence_from_file(raw)),
        require(lambda: [r.hex().encode() for r, _ in _pairs()]),
    ),
]

pytestmark = pytest.mark.fuzz


@pytest.mark.parametrize("target", TARGETS, ids=str)
def test_fuzz(target: Target) -> None:
    run(target)
