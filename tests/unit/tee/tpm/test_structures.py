"""TPM structure parsers: strict, and never crash on arbitrary bytes or JSON."""

from __future__ import annotations

import contextlib
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelseal.errors import ConfigError, EvidenceError, UnsupportedTee
from modelseal.tee.tpm import TpmConfig
from modelseal.tee.tpm.evidence import build_evidence, parse_evidence
from modelseal.tee.tpm.structures import (
    TPM_GENERATED_VALUE,
    TPM_ST_ATTEST_QUOTE,
    parse_attest,
    parse_public,
    parse_signature,
)
from modelseal.tee.tpm.trust import TrustStore
from modelseal.tee.tpm.verifier import Verifier


def _attest(
    *, magic: int = TPM_GENERATED_VALUE, kind: int = TPM_ST_ATTEST_QUOTE, extra: bytes = b"n" * 32
) -> bytes:
    body = struct.pack(">IH", magic, kind)
    body += struct.pack(">H", 34) + b"\x00\x0b" + b"s" * 32
    body += struct.pack(">H", len(extra)) + extra
    body += struct.pack(">QIIB", 1, 2, 3, 1) + struct.pack(">Q", 7)
    body += struct.pack(">I", 1) + b"\x00\x0b\x03\x01\x00\x01"  # sha256: PCR0, PCR16
    body += struct.pack(">H", 32) + b"d" * 32
    return body


def test_attest_fields() -> None:
    a = parse_attest(_attest())
    assert a.extra_data == b"n" * 32
    assert (a.clock, a.reset_count, a.restart_count, a.safe, a.firmware_version) == (
        1,
        2,
        3,
        True,
        7,
    )
    assert a.pcr_select[0].bank == "sha256"
    assert a.pcr_select[0].indices == (0, 16)
    assert a.pcr_digest == b"d" * 32


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (_attest(magic=0xFF544348), "magic"),
        (_attest(kind=0x8017), "ATTEST_QUOTE"),
        (_attest(extra=b"x" * 65), "too large"),
        (_attest() + b"\x00", "trailing"),
        (_attest()[:-1], "truncated"),
    ],
)
def test_attest_strict(data: bytes, reason: str) -> None:
    with pytest.raises(EvidenceError, match=reason):
        parse_attest(data)


def test_signature_and_public_strict() -> None:
    ecdsa = parse_signature(b"\x00\x18\x00\x0b" + b"\x00\x02rr" + b"\x00\x02ss")
    assert (ecdsa.scheme, ecdsa.hash, ecdsa.r, ecdsa.s) == ("ecdsa", "sha256", b"rr", b"ss")
    with pytest.raises(EvidenceError, match="not supported"):
        parse_signature(b"\x00\x10\x00\x0b")  # TPM_ALG_NULL signature
    with pytest.raises(EvidenceError, match="hash"):
        parse_signature(b"\x00\x14\x00\x99\x00\x00")
    with pytest.raises(EvidenceError):
        parse_public(b"\x00\x25" + bytes(20))  # symcipher object


def test_evidence_round_trip_and_shape_errors() -> None:
    doc = build_evidence(ak_public=b"k", message=b"m", signature=b"s", pcrs=[b"\x00" * 32])
    ev = parse_evidence(doc)
    assert (ev.ak_public, ev.message, ev.signature, ev.pcrs) == (b"k", b"m", b"s", [bytes(32)])
    for bad in (
        [],
        {"tpm_quote": {}},
        {**doc, "ak_public": "!!"},
        {**doc, "tpm_quote": {**doc["tpm_quote"], "pcrs": ["zz"]}},
        {**doc, "tpm_quote": {**doc["tpm_quote"], "pcrs": ["00"] * 25}},
        {**doc, "ak_certs": "x"},
    ):
        with pytest.raises(EvidenceError):
            parse_evidence(bad)


def test_trust_store_config_errors(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedTee, match="tpm-trusted-aks"):
        Verifier.from_config(TpmConfig())
    with pytest.raises(ConfigError, match="does not exist"):
        TrustStore.load(tmp_path / "missing")
    (tmp_path / "junk").write_bytes(b"not a key")
    with pytest.raises(ConfigError, match="neither a key"):
        TrustStore.load(tmp_path)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=40, max_size=200))
def test_mutated_attest_never_crashes(tail: bytes) -> None:
    with contextlib.suppress(EvidenceError):
        parse_attest(_attest()[:30] + tail)


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 300) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=16,
)


@settings(max_examples=200, deadline=None)
@given(_json)
def test_verifier_never_crashes_on_random_json(doc: Any) -> None:
    verifier = Verifier(TrustStore(keys={b"k"}))
    for evidence in (doc, {"ak_public": "aw==", "tpm_quote": doc}):
        with contextlib.suppress(EvidenceError):
            verifier.verify(evidence, expected_report_data=b"", now=0)


def test_trust_store_refuses_unrestricted_tpm_key(shared_vectors: Path, tmp_path: Path) -> None:
    """A TPM2B_PUBLIC without restricted|sign|fixedTPM could sign forged quotes."""
    import json

    gce = json.loads(
        (shared_vectors / "tpm/go-tpm-tools/gce-cos-85-nonce9009.extracted.json").read_text()
    )
    public = bytearray(bytes.fromhex(gce["ak_pub_tpmt_public"]))
    ok = tmp_path / "ok"
    ok.write_bytes(bytes(public))
    assert len(TrustStore.load(ok).keys) == 1
    public[5] &= 0xFE  # objectAttributes (bytes 4..7, big-endian): clear restricted, bit 16
    bad = tmp_path / "bad"
    bad.write_bytes(bytes(public))
    with pytest.raises(ConfigError, match="restricted"):
        TrustStore.load(bad)


def test_ak_certificate_with_unknown_version_is_malformed(shared_vectors: Path) -> None:
    """A flipped version byte in an evidence AK certificate is an EvidenceError, not a crash."""
    der = bytearray((shared_vectors / "snp/go-sev-guest/vcek.der").read_bytes())
    at = der.find(bytes([0xA0, 0x03, 0x02, 0x01, 0x02]))
    der[at + 4] = 7
    store = TrustStore(anchors=[])
    with pytest.raises(EvidenceError, match="malformed"):
        store.check(b"not-a-trusted-spki", [bytes(der)], now=0.0)


def test_ak_certificate_with_unknown_key_algorithm_is_malformed(shared_vectors: Path) -> None:
    """pyca's UnsupportedAlgorithm (an unknown SPKI OID) is an EvidenceError, not a crash."""
    der = (shared_vectors / "snp/go-sev-guest/vcek.der").read_bytes()
    ec_public_key = bytes.fromhex("06072a8648ce3d0201")  # OID 1.2.840.10045.2.1
    assert ec_public_key in der
    bad = der.replace(ec_public_key, bytes.fromhex("06072a8648ce3d5101"), 1)
    with pytest.raises(EvidenceError, match="malformed"):
        TrustStore(anchors=[]).check(b"not-a-trusted-spki", [bad], now=0.0)


_FLIPS = st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), min_size=1, max_size=3)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(flips=_FLIPS)
def test_mutated_ak_certificate_chain_never_crashes(
    shared_vectors: Path, flips: list[tuple[int, int]]
) -> None:
    """Flipped bytes anywhere in an evidence AK certificate: typed EvidenceError, never a crash."""
    der = bytearray((shared_vectors / "snp/go-sev-guest/vcek.der").read_bytes())
    for pos, xor in flips:
        der[pos % len(der)] ^= xor
    with pytest.raises(EvidenceError):
        TrustStore(anchors=[]).check(b"not-a-trusted-spki", [bytes(der)], now=0.0)
