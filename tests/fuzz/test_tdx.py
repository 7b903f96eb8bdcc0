"""Fuzz targets: Intel TDX/SGX evidence (DCAP quotes and their wire forms, collateral), from
the parsers up to the full verifier, mutating real quotes and collateral."""

from __future__ import annotations

import base64
import json
from functools import cache
from typing import Any

import pytest

from modelseal._internal.encoding import hex_decode
from modelseal.errors import EvidenceError
from modelseal.tee.base import VerifierConfig
from modelseal.tee.tdx.collateral import CollateralSet, parse_collateral
from modelseal.tee.tdx.evidence import decode_evidence
from modelseal.tee.tdx.quote import parse_quote
from modelseal.tee.tdx.sgx.verifier import Verifier as SgxVerifier
from modelseal.tee.tdx.verifier import Verifier as TdxVerifier
from tests.fuzz.harness import (
    HOSTILE_TEXT,
    Target,
    json_input,
    json_mutated,
    read_vectors,
    require,
    run,
    shared,
)

#: inside the validity window of tdx_quote_collateral.json and sgx_quote_collateral.json
NOW = 1752919234
TDX_COLLATERAL = shared("tdx", "dcap-qvl", "tdx_quote_collateral.json")
SGX_COLLATERAL = shared("sgx", "dcap-qvl", "sgx_quote_collateral.json")


@cache
def _quotes() -> tuple[bytes, ...]:
    binary = read_vectors(
        *[shared("tdx", d, f) for d, f in [
            ("dcap-qvl", "tdx_quote"), ("dcap-qvl", "tdx_quote_outdated"),
            ("trustee", "tdx_quote_4.dat"), ("trustee", "tdx_quote_5.dat"),
            ("trustee", "tdx_quote_6.dat"), ("go-tdx-guest", "quote_v5_sample.dat"),
            ("go-tdx-guest", "tdx_prod_quote_SPR_E4.dat"),
        ]],
        shared("sgx", "dcap-qvl", "sgx_quote"),
        shared("sgx", "trustee", "occlum_quote.dat"),
    )  # fmt: skip
    text = read_vectors(shared("tdx", "dcap-qvl", "quote-from-tappd.hex"))
    return tuple(binary) + tuple(hex_decode(t.decode().strip()) for t in text)


def _tdx_quote() -> bytes:
    return require(lambda: read_vectors(shared("tdx", "dcap-qvl", "tdx_quote")))()[0]


def _wire_docs() -> list[Any]:
    quote = base64.b64encode(_tdx_quote()[:2000]).decode()
    ccel = base64.b64encode(b"\x00" * 64).decode()
    return [
        {"quote": quote, "cc_eventlog": ccel, "aa_eventlog": None},
        {"quote": quote, "cc_eventlog": None, "aa_eventlog": "INIT sha384/00\n"},
    ]


def _evidence_forms() -> list[bytes]:
    quote = _tdx_quote()
    return [quote, quote.hex().encode(), json.dumps(_wire_docs()[0]).encode()]


@cache
def _verifiers() -> tuple[TdxVerifier, SgxVerifier]:
    return (
        TdxVerifier.from_config(VerifierConfig(collateral=str(TDX_COLLATERAL))),
        SgxVerifier.from_config(VerifierConfig(collateral=str(SGX_COLLATERAL))),
    )


def _verify(data: bytes) -> object:
    """The KBS's full path for a raw quote: TDX verifier, or SGX when the header says so."""
    tdx, sgx = _verifiers()
    verifier = sgx if data[4:8] == b"\x00\x00\x00\x00" else tdx
    try:  # the session's binding: the report data the quote carries, when it parses
        expected = parse_quote(data).report.report_data
    except EvidenceError:
        expected = bytes(64)
    return verifier.verify(data, expected_report_data=expected, now=NOW)


class _OneSet:
    """A collateral store that serves one (fuzzed) collateral set whatever is asked."""

    def __init__(self, collateral: CollateralSet) -> None:
        self.collateral = collateral

    def get(self, tee: str, fmspc: str, ca: str, now: float) -> CollateralSet:
        return self.collateral


def _collateral_docs() -> list[Any]:
    return [json.loads(p.read_text()) for p in (TDX_COLLATERAL, SGX_COLLATERAL) if p.is_file()]


def _verify_with_collateral(doc: Any) -> object:
    """A real TDX quote verified against fuzzed collateral (what a hostile PCCS serves)."""
    verifier = TdxVerifier(_OneSet(parse_collateral(doc, source="fuzz")))  # type: ignore[arg-type]
    quote = _tdx_quote()
    return verifier.verify(
        quote, expected_report_data=parse_quote(quote).report.report_data, now=NOW
    )


TARGETS = [
    Target("tdx-quote", parse_quote, _quotes, max_random=1_000),
    Target("tdx-evidence-bytes", decode_evidence, require(_evidence_forms), hostile=HOSTILE_TEXT),
    Target(
        "tdx-evidence-json",
        json_input(decode_evidence),
        lambda: [json.dumps(d).encode() for d in _wire_docs()],
        extra=lambda: json_mutated(_wire_docs()),
    ),
    Target("tdx-verify", _verify, require(_quotes)),
    Target(
        "tdx-collateral",
        json_input(lambda d: parse_collateral(d, source="fuzz")),
        require(lambda: [json.dumps(d).encode() for d in _collateral_docs()]),
        extra=lambda: json_mutated(_collateral_docs()),
    ),
    Target(
        "tdx-collateral-verify",
        json_input(_verify_with_collateral),
        require(lambda: [json.dumps(d).encode() for d in _collateral_docs()[:1]]),
        extra=lambda: json_mutated(_collateral_docs()[:1]),
    ),
]

pytestmark = pytest.mark.fuzz


@pytest.mark.parametrize("target", TARGETS, ids=str)
def test_fuzz(target: Target) -> None:
    run(target)
