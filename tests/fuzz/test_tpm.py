"""Fuzz targets: TPM 2.0 evidence (TPMS_ATTEST, TPMT_SIGNATURE, TPMT/TPM2B_PUBLIC and the JSON
evidence document) up to the full verifier, mutating real quotes."""

from __future__ import annotations

import base64
import json
import struct
from functools import cache
from typing import Any

import pytest

from modelseal.crypto.tpm_sig import certificate_spki
from modelseal.crypto.x509_pem import cert_der, parse_certificates
from modelseal.errors import EvidenceError
from modelseal.tee.tpm.structures import parse_attest, parse_public, parse_signature
from modelseal.tee.tpm.trust import TrustStore
from modelseal.tee.tpm.verifier import Verifier
from tests.fuzz.harness import Target, json_input, json_mutated, require, run, shared

NOW = 1_767_225_600.0  # 2026-01-01
TRUSTEE = shared("tpm", "trustee", "tpm_evidence.json")
AZURE = shared("tpm", "trustee-az-snp-vtpm", "tpm-quote-v1.json")
GCE = shared("tpm", "go-tpm-tools", "gce-cos-85-nonce9009.extracted.json")


def _json(path: Any) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def _parts(name: str) -> list[bytes]:
    """``message`` / ``signature`` / ``public`` structures of every real quote."""
    trustee, azure, gce = _json(TRUSTEE), _json(AZURE), _json(GCE)
    out: list[bytes] = []
    if name in ("message", "signature"):
        if trustee:
            out.append(base64.b64decode(trustee["tpm_quote"][name]))
        if azure and name == "message":  # its signature is a bare RSA signature
            out.append(bytes.fromhex(azure[name]))
        if gce:
            key = "tpms_attest" if name == "message" else "tpmt_signature"
            out += [bytes.fromhex(q[key]) for q in gce["quotes"]]
    elif gce:
        tpmt = bytes.fromhex(gce["ak_pub_tpmt_public"])
        out += [tpmt, struct.pack(">H", len(tpmt)) + tpmt]
    return out


@cache
def _verifier() -> Verifier:
    store = TrustStore()
    store.add_blob(base64.b64decode(_json(TRUSTEE)["ak_public"]), "ak_public")
    return Verifier(store)


def _verify(doc: Any) -> object:
    """The KBS's path, bound to the nonce the quote itself carries."""
    try:
        nonce = parse_attest(base64.b64decode(doc["tpm_quote"]["message"])).extra_data
    except (EvidenceError, KeyError, TypeError, ValueError):  # the verifier judges such input
        nonce = bytes(32)
    return _verifier().verify(doc, expected_report_data=nonce[:64], now=NOW)


def _verify_message(data: bytes) -> object:
    """The real evidence with a fuzzed TPMS_ATTEST (what the signature covers)."""
    doc = _json(TRUSTEE)
    doc["tpm_quote"]["message"] = base64.b64encode(data).decode()
    return _verify(doc)


GOOGLE = shared("tpm", "go-tpm-tools")


@cache
def _google_chain() -> tuple[bytes, bytes, Any] | None:
    """(GCE AK certificate, its intermediate CA, the root CA): a real AK chain."""
    gce = _json(GCE)
    if gce is None:
        return None
    intermediate, root = (
        parse_certificates((GOOGLE / name).read_bytes())[0]
        for name in ("tpm_ek_intermediate_2.crt", "tpm_ek_root_1.cer")
    )
    return bytes.fromhex(gce["ak_cert_der"]), cert_der(intermediate), root


def _check_ak_certificate(data: bytes) -> object:
    """The KBS's AK-certificate path: a fuzzed AK certificate, the real intermediate, the
    real root as the configured anchor, the real AK as the quoting key."""
    chain = _google_chain()
    assert chain is not None
    ak, intermediate, root = chain
    ak_spki = certificate_spki(parse_certificates(ak)[0])
    return TrustStore(anchors=[root]).check(ak_spki, [data, intermediate], now=NOW)


TARGETS = [
    Target("tpm-attest", parse_attest, lambda: _parts("message"), max_random=400),
    Target("tpm-signature", parse_signature, lambda: _parts("signature"), max_random=600),
    Target("tpm-public", parse_public, lambda: _parts("public"), max_random=600),
    Target(
        "tpm-ak-certificate",
        _check_ak_certificate,
        require(lambda: [c[0] for c in [_google_chain()] if c is not None]),
    ),
    Target("tpm-verify-message", _verify_message, require(lambda: _parts("message")[:1])),
    Target(
        "tpm-evidence-json",
        json_input(_verify),
        require(lambda: read_json_seed(TRUSTEE)),
        extra=lambda: json_mutated([_json(TRUSTEE)]),
    ),
]


def read_json_seed(path: Any) -> list[bytes]:
    return [path.read_bytes()] if path.is_file() else []


pytestmark = pytest.mark.fuzz


@pytest.mark.parametrize("target", TARGETS, ids=str)
def test_fuzz(target: Target) -> None:
    run(target)
