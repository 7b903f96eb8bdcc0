"""Fuzz targets: Intel TDX/SGX evidence (DCAP quotes and their wire forms, collateral), from
the parsers up to the full verifier, mutating real quotes and collateral."""

from __future__ import annotations

import base64
import contextlib
import json
import urllib.parse
from collections.abc import Iterator
from functools import cache
from http.server import BaseHTTPRequestHandler
from typing import Any, ClassVar

import pytest

from modelseal._internal.encoding import hex_decode
from modelseal.errors import EvidenceError
from modelseal.tee.tdx.collateral import CollateralSet, CollateralStore, parse_collateral
from modelseal.tee.tdx.config import SgxConfig, TdxConfig
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
from tests.unit.tee.tdx.test_collateral import _serving

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
        TdxVerifier.from_config(TdxConfig(collateral=str(TDX_COLLATERAL))),
        SgxVerifier.from_config(SgxConfig(collateral=str(SGX_COLLATERAL))),
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


#: PCCS endpoints (path, issuer-chain header, collateral member of the chain)
PCCS = (
    ("/sgx/certification/v4/pckcrl", "SGX-PCK-CRL-Issuer-Chain", "pck_crl_issuer_chain"),
    ("/sgx/certification/v4/rootcacrl", None, None),
    ("/tdx/certification/v4/tcb", "TCB-Info-Issuer-Chain", "tcb_info_issuer_chain"),
    (
        "/tdx/certification/v4/qe/identity",
        "SGX-Enclave-Identity-Issuer-Chain",
        "qe_identity_issuer_chain",
    ),
)


def _pccs_bodies() -> list[bytes]:
    """What a PCCS serves for the real collateral, endpoint by endpoint."""
    doc = _collateral_docs()[0]
    return [
        bytes.fromhex(doc["pck_crl"]),
        doc["root_ca_crl"].encode(),
        f'{{"tcbInfo":{doc["tcb_info"]},"signature":"{doc["tcb_info_signature"]}"}}'.encode(),
        f'{{"enclaveIdentity":{doc["qe_identity"]},"signature":"{doc["qe_identity_signature"]}"}}'.encode(),
    ]  # fmt: skip


class _Pccs(BaseHTTPRequestHandler):
    """Serves the real collateral, with one endpoint's body replaced by the fuzzed one."""

    bodies: ClassVar[list[bytes]] = []

    def log_message(self, *_args: Any) -> None:
        pass

    def do_GET(self) -> None:
        path = urllib.parse.urlparse(self.path).path
        index = next((i for i, e in enumerate(PCCS) if e[0] == path), None)
        if index is None:
            self.send_error(404)
            return
        body, header = self.bodies[index], PCCS[index][1]
        self.send_response(200)
        if header is not None:
            member = PCCS[index][2]
            self.send_header(header, urllib.parse.quote(_collateral_docs()[0][member]))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _pccs_target(url: str) -> Target:
    """Collateral downloaded from a hostile PCCS: the first byte picks the endpoint whose
    body the rest replaces (seeds: each real body)."""

    def fetch(data: bytes) -> object:
        bodies = _pccs_bodies()
        if data:
            bodies[data[0] % len(bodies)] = data[1:]
        _Pccs.bodies = bodies
        return CollateralStore(pccs_url=url, timeout=5).get("TDX", "b0c06f000000", "platform", NOW)

    return Target(
        "tdx-pccs",
        fetch,
        require(lambda: [bytes([i]) + body for i, body in enumerate(_pccs_bodies())]),
        quick_examples=15,  # four loopback HTTP requests each
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


@contextlib.contextmanager
def served_targets() -> Iterator[list[Target]]:
    """Targets that need a live loopback server (the atheris runner uses this too)."""
    with _serving(_Pccs) as url:
        yield [_pccs_target(url)]


@pytest.mark.parametrize("name", ["tdx-pccs"])
def test_fuzz_served(name: str) -> None:
    with served_targets() as targets:
        run(next(t for t in targets if t.name == name))
