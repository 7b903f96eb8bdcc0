"""Fuzz targets: Azure CVM evidence (the HCL report, the evidence JSON of both kinds) up to
the full az-snp-vtpm and az-tdx-vtpm verifiers, mutating Trustee's real vectors."""

from __future__ import annotations

import base64
import json
from functools import cache
from typing import Any

import pytest

from modelseal.errors import EvidenceError
from modelseal.tee.azure.evidence import parse_evidence
from modelseal.tee.azure.hcl import parse_hcl_report
from modelseal.tee.base import Verifier
from modelseal.tee.registry import build_config, verifier_for
from modelseal.tee.tpm.structures import parse_attest
from tests.fuzz.harness import Target, json_input, json_mutated, read_vectors, require, run, shared

NOW = 1_767_225_600.0  # 2026-01-01
SNP = shared("tpm", "trustee-az-snp-vtpm")
TDX = shared("tpm", "trustee-az-tdx-vtpm")


def _json(path: Any) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


@cache
def _verifier(kind: str) -> Verifier:
    return verifier_for(kind, build_config(kind, {}))


def _verify(kind: str, hardware: str) -> Any:
    def call(doc: Any) -> object:
        """The KBS's path, bound to the nonce the quote itself carries."""
        try:
            nonce = parse_attest(parse_evidence(doc, hardware=hardware).tpm_quote.message)
            expected = nonce.extra_data[:64] or b"\x00"
        except EvidenceError:  # the verifier judges such input
            expected = b"challenge"
        return _verifier(kind).verify(doc, expected_report_data=expected, now=NOW)

    return call


def _with_hcl(data: bytes) -> object:
    """The real SNP evidence with a fuzzed HCL report (what binds the AK and the hardware)."""
    doc = _json(SNP / "evidence-v1.json")
    doc["hcl_report"] = base64.urlsafe_b64encode(data).decode()
    return _verify("az-snp-vtpm", "snp")(doc)


TARGETS = [
    Target(
        "azure-hcl-report",
        parse_hcl_report,
        require(lambda: read_vectors(SNP / "hcl-report.bin", TDX / "hcl-report.bin")),
        max_random=3000,
    ),
    Target("azure-verify-hcl", _with_hcl, require(lambda: read_vectors(SNP / "hcl-report.bin"))),
    Target(
        "azure-snp-evidence-json",
        json_input(_verify("az-snp-vtpm", "snp")),
        require(lambda: read_vectors(SNP / "evidence-v1.json", SNP / "evidence-v2.json")),
        extra=lambda: json_mutated([_json(SNP / "evidence-v2.json")]),
    ),
    Target(
        "azure-tdx-evidence-json",
        json_input(_verify("az-tdx-vtpm", "tdx")),
        require(lambda: read_vectors(TDX / "evidence-v1.json")),
        extra=lambda: json_mutated([_json(TDX / "evidence-v1.json")]),
    ),
]

pytestmark = pytest.mark.fuzz


@pytest.mark.parametrize("target", TARGETS, ids=str)
def test_fuzz(target: Target) -> None:
    run(target)
