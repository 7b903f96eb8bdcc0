"""The NVIDIA verifier on the real Hopper reports: Trustee's claims, and every way to fail."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest

from modelseal.crypto.x509_pem import cert_pem
from modelseal.crypto.x509_test_ca import P256Key, issue_certificate
from modelseal.errors import EvidenceError
from modelseal.tee import registry
from modelseal.tee.nvidia import certs
from modelseal.tee.nvidia.evidence import build_device, build_evidence
from modelseal.tee.nvidia.verifier import Verifier, trustee_claims
from tests.unit.tee.nvidia.conftest import COCO, NOW, NV, SAMPLE, Pair

UUID = "1111-2222-33333-444444-555555"


def _evidence(report: bytes, chain: bytes | None, **kw: Any) -> Any:
    return json.loads(json.dumps(build_evidence([build_device(report, chain, uuid=UUID, **kw)])))


def _verify(pair: Pair, *, report: bytes | None = None, chain: bytes | None = None) -> Any:
    evidence = _evidence(report or pair.report, chain or pair.chain)
    return Verifier().verify(evidence, expected_report_data=bytes.fromhex(pair.nonce), now=NOW)


def test_claims_equal_trustees() -> None:
    claims = _verify(SAMPLE)
    expected = json.loads((NV / "hopperAttestationReport-claims.txt").read_text())
    assert trustee_claims(claims) == expected
    assert claims.tee == "nvidia"
    assert not claims.debug
    assert not claims.insecure
    assert claims.report_data.hex() == SAMPLE.nonce


def test_both_reports_verify(pair: Pair) -> None:
    claims = _verify(pair)
    assert claims.extra["driver_version"] == pair.driver
    assert claims.extra["vbios_version"] == pair.vbios
    assert claims.extra["config"]["fwid"] == pair.fwid
    assert claims.extra["chain"][-1] == "NVIDIA Device Identity CA"
    assert len(claims.measurements) == 64


def test_the_registry_builds_it() -> None:
    config = registry.build_config("nvidia", {})
    verifier = registry.verifier_for("nvidia", config)
    evidence = _evidence(COCO.report, COCO.chain)
    assert verifier.verify(evidence, expected_report_data=bytes.fromhex(COCO.nonce), now=NOW)


def test_wrong_nonce_last_byte(pair: Pair) -> None:
    nonce = bytearray(bytes.fromhex(pair.nonce)[:32])
    nonce[-1] ^= 1
    evidence = _evidence(pair.report, pair.chain)
    with pytest.raises(EvidenceError, match="binding mismatch"):
        Verifier().verify(evidence, expected_report_data=bytes(nonce), now=NOW)


def test_flipped_last_signed_byte(pair: Pair) -> None:
    raw = bytearray(pair.report)
    raw[pair.signed_end - 1] ^= 1
    with pytest.raises(EvidenceError, match="signature is invalid"):
        _verify(pair, report=bytes(raw))


def test_flipped_signature_byte(pair: Pair) -> None:
    raw = bytearray(pair.report)
    raw[pair.signed_end + 95] ^= 1
    with pytest.raises(EvidenceError, match="signature is invalid"):
        _verify(pair, report=bytes(raw))


@pytest.mark.parametrize("offset", [4, 40, 100, 2000, 3900])
def test_flipped_bytes_across_the_signed_region(offset: int) -> None:
    raw = bytearray(SAMPLE.report)
    raw[offset] ^= 0x80
    with pytest.raises(EvidenceError):
        _verify(SAMPLE, report=bytes(raw))


@pytest.mark.parametrize(
    ("chain_file", "reason"),
    [
        ("hopper_cert_chain_case2.txt", "signing certificate and its CAs"),  # only the root
        ("hopper_cert_chain_case3.txt", "does not chain to the pinned root"),
        ("hopper_cert_chain_case4.txt", "FWID"),  # no leaf
    ],
)
def test_trustees_negative_chains(chain_file: str, reason: str) -> None:
    with pytest.raises(EvidenceError, match=reason):
        _verify(SAMPLE, chain=(NV / chain_file).read_bytes())


def test_the_other_reports_chain_does_not_sign_it() -> None:
    with pytest.raises(EvidenceError, match="FWID does not match"):
        _verify(SAMPLE, chain=COCO.chain)


def _test_root() -> tuple[P256Key, Any]:
    key = P256Key.generate()
    now = dt.datetime.fromtimestamp(NOW, dt.UTC)
    root = issue_certificate(
        subject_cn="NVIDIA Device Identity CA",
        subject_key=key,
        issuer_key=key,
        issuer_cert=None,
        serial=1,
        not_before=now - dt.timedelta(days=1),
        not_after=now + dt.timedelta(days=1),
        ca=True,
        organization="NVIDIA",
    )
    return key, root


def test_chain_ending_at_another_root() -> None:
    """The real chain with its root swapped for a look-alike self-signed CA."""
    _, fake_root = _test_root()
    real = certs.load_chain(SAMPLE.chain, "chain")
    chain = b"".join(cert_pem(c) for c in real[:-1]) + cert_pem(fake_root)
    with pytest.raises(EvidenceError, match="not the pinned root"):
        _verify(SAMPLE, chain=chain)


def test_chain_missing_its_root_still_reaches_the_pinned_one() -> None:
    real = certs.load_chain(SAMPLE.chain, "chain")
    claims = _verify(SAMPLE, chain=b"".join(cert_pem(c) for c in real[:-1]))
    assert claims.extra["chain"][-1] == "NVIDIA Device Identity CA"


def test_no_chain_anywhere() -> None:
    with pytest.raises(EvidenceError, match="--collateral"):
        Verifier().verify(_evidence(SAMPLE.report, None), expected_report_data=bytes(32), now=NOW)


def test_configured_chain_for_a_bare_report() -> None:
    verifier = Verifier(chain_pem=SAMPLE.chain)
    evidence = Verifier.evidence_from_file(SAMPLE.report_file.read_bytes())
    assert Verifier.own_report_data(evidence) == bytes.fromhex(SAMPLE.nonce)
    claims = verifier.verify(evidence, expected_report_data=bytes.fromhex(SAMPLE.nonce), now=NOW)
    assert claims.extra["uuid"] == "unknown"


def test_base64_report_as_sent_by_newer_attesters() -> None:
    import base64

    entry = build_device(COCO.report, COCO.chain)
    entry["evidence"] = base64.b64encode(COCO.report).decode()
    claims = Verifier().verify(
        build_evidence([entry]), expected_report_data=bytes.fromhex(COCO.nonce), now=NOW
    )
    assert claims.extra["vbios_version"] == COCO.vbios


@pytest.mark.parametrize(
    ("evidence", "reason"),
    [
        ([], "JSON object"),
        ({"device_evidence_list": []}, "no device"),
        ({"device_evidence_list": {}}, "must be a list"),
        ({"device_evidence_list": [1]}, "JSON object"),
        ({"arch": "BLACKWELL", "evidence": "00"}, "only Hopper"),
        ({"arch": "HOPPER", "evidence": 5}, "must be a string"),
        ({"arch": "HOPPER", "evidence": "!!"}, "neither hex nor base64"),
        ({"arch": "HOPPER", "evidence": "00", "certificate": "%%"}, "not base64"),
        ({"arch": "HOPPER", "evidence": "00", "cc_mode": "maybe"}, "cc_mode"),
    ],
)
def test_malformed_evidence(evidence: Any, reason: str) -> None:
    with pytest.raises(EvidenceError, match=reason):
        Verifier().verify(evidence, expected_report_data=bytes(32), now=NOW)


def test_several_devices_are_split_not_verified_at_once() -> None:
    two = build_evidence([build_device(SAMPLE.report, SAMPLE.chain)] * 2)
    with pytest.raises(EvidenceError, match="2 devices"):
        Verifier().verify(two, expected_report_data=bytes(32), now=NOW)
    parts = Verifier.split_devices(two)
    assert len(parts) == 2
    for part in parts:
        Verifier().verify(part, expected_report_data=bytes.fromhex(SAMPLE.nonce), now=NOW)


def test_a_cached_chain_is_checked_again_outside_its_validity() -> None:
    from tests.unit.tee.nvidia.mockgpu import MockGpu

    gpu = MockGpu()
    verifier = Verifier(device_root=gpu.root)
    nonce = bytes(32)
    evidence = build_evidence([build_device(gpu.report(nonce), gpu.chain_pem)])
    now = gpu.leaf.not_valid_before_utc.timestamp() + 60
    assert verifier.verify(evidence, expected_report_data=nonce, now=now)
    later = gpu.leaf.not_valid_after_utc.timestamp() + 1
    with pytest.raises(EvidenceError, match="does not chain"):
        verifier.verify(evidence, expected_report_data=nonce, now=later)


def test_a_certificate_name_of_the_wrong_asn1_type() -> None:
    """Found by fuzzing: a name attribute re-tagged as a BIT STRING made pyca raise a
    TypeError on first access to the name; it is a malformed chain."""
    import base64

    blocks = SAMPLE.chain.split(b"-----END CERTIFICATE-----\n")[:-1]
    ders = [bytearray(base64.b64decode(b.split(b"-----\n", 1)[1])) for b in blocks]
    country = bytes.fromhex("06035504061302" + "5553")  # C=US, PrintableString
    at = ders[2].find(country)
    ders[2][at + 5] = 0x03  # BIT STRING
    ders[2][at + 7] = 0x00
    chain = b"".join(
        b"-----BEGIN CERTIFICATE-----\n"
        + base64.encodebytes(bytes(d))
        + b"-----END CERTIFICATE-----\n"
        for d in ders
    )
    with pytest.raises(EvidenceError, match="not a PEM certificate chain"):
        _verify(SAMPLE, chain=chain)
