"""Sample TEE: Trustee evidence shape, padding rule, refusal without the insecure flag."""

from __future__ import annotations

import base64
import hashlib

import pytest

from modelseal.errors import EvidenceError, FormatError, UnsupportedTee
from modelseal.tee.registry import attester_for, verifier_for
from modelseal.tee.sample import SampleConfig
from modelseal.tee.sample.attester import Attester
from modelseal.tee.sample.verifier import Verifier

DIGEST = hashlib.sha384(b"binding").digest()


def _verifier() -> Verifier:
    return Verifier.from_config(SampleConfig(allow=True))


def test_evidence_shape() -> None:
    ev = Attester().evidence(DIGEST)
    assert ev == {"svn": "1", "report_data": base64.b64encode(DIGEST).decode()}


def test_registry_builds_both() -> None:
    assert attester_for("sample").tee == "sample"
    assert verifier_for("sample", SampleConfig(allow=True)).tee == "sample"


def test_refused_without_flag() -> None:
    with pytest.raises(UnsupportedTee, match="insecure-allow-sample"):
        verifier_for("sample", SampleConfig())


def test_fixed_insecure_claims() -> None:
    claims = _verifier().verify(Attester().evidence(DIGEST), expected_report_data=DIGEST, now=0)
    assert claims.tee == "sample"
    assert claims.debug is False
    assert claims.tcb_status == "UpToDate"
    assert claims.insecure is True
    assert claims.extra == {"svn": "1"}
    assert claims.report_data == DIGEST + bytes(16)


def test_padding_both_sides() -> None:
    padded = Attester().evidence(DIGEST + bytes(16))  # a guest that pads itself
    assert _verifier().verify(padded, expected_report_data=DIGEST, now=0).tee == "sample"


@pytest.mark.parametrize(
    "evidence",
    [
        {"svn": "1", "report_data": base64.b64encode(b"\x01" * 48).decode()},
        {"svn": "1", "report_data": base64.b64encode(DIGEST[:-1]).decode()},
        {"svn": "1", "report_data": "not base64!"},
        {"svn": "1", "report_data": base64.b64encode(b"\x00" * 65).decode()},
        {"svn": 1, "report_data": base64.b64encode(DIGEST).decode()},
        {"report_data": base64.b64encode(DIGEST).decode()},
        "string",
        None,
    ],
)
def test_rejections(evidence: object) -> None:
    with pytest.raises(EvidenceError):
        _verifier().verify(evidence, expected_report_data=DIGEST, now=0)


def test_init_data_claims() -> None:
    toml = b'version = "0.1.0"\nalgorithm = "sha256"\n[data]\nmodel = "m"\n'
    claims = _verifier().verify(
        Attester().evidence(DIGEST), expected_report_data=DIGEST, now=0, init_data=toml
    )
    assert claims.init_data == {"model": "m"}
    assert claims.init_data_digest == hashlib.sha256(toml).hexdigest()
    for bad in (b"= broken", b'algorithm = "md5"', b'algorithm = "sha256"\n[data]\nx = 1\n'):
        with pytest.raises(EvidenceError):
            _verifier().verify(
                Attester().evidence(DIGEST), expected_report_data=DIGEST, now=0, init_data=bad
            )


@pytest.mark.parametrize(
    "bad", [b"a = " + b"[" * 2_000 + b"]" * 2_000, b"a = " + b"9" * 5_000], ids=["deep", "digits"]
)
def test_hostile_init_data_is_an_evidence_error(bad: bytes) -> None:
    """tomllib recurses per nesting level and refuses integers over 4,300 digits with a plain
    ValueError: both escaped as other exception types (found by fuzzing)."""
    with pytest.raises(EvidenceError):
        _verifier().verify(
            Attester().evidence(DIGEST), expected_report_data=DIGEST, now=0, init_data=bad
        )


def test_attester_refuses_oversize() -> None:
    with pytest.raises(FormatError):
        Attester().evidence(bytes(65))
