"""Runtime (AAEL) events: encoded as CoCo's AA does, replayed and checked by the verifier.

The digest vectors are those of guest-components' own test
(``attestation-agent/src/eventlog/mod.rs``, ``test_event_digest``): the hash of the
tagged event data of ``domain operation content``.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import pytest

from modelseal._internal.encoding import b64_decode, b64_encode
from modelseal.errors import EvidenceError, FormatError, UnsupportedTee
from modelseal.protocol.runtime_events import load_model_event
from modelseal.tee import registry
from modelseal.tee.eventlog.aael import END_FLAG, aael_entry, tagged_event_data
from modelseal.tee.mock_tdx import MockTdxConfig
from modelseal.tee.mock_tdx.attester import Attester
from modelseal.tee.mock_tdx.ca import MockTdxCA

RD = bytes(range(48))
DIGEST = "sha256:" + "5e" * 32


def test_digests_match_the_agents_vectors() -> None:
    data = tagged_event_data("domain operation content")
    assert hashlib.sha256(data).hexdigest() == (
        "46df8dacf00a07d34a83cdf56d7978697790787cf2ba1432ef7c38f22cd96351"
    )
    assert aael_entry("domain operation content")[1].hex() == (
        "dad5f0e226318ffa9839b75a472c6aa7fdb5834949d0a0a22990cf04d5692440"
        "fb00f3aa0609db7e49cd8d793f670d02"
    )


def test_entry_layout() -> None:
    entry, digest = aael_entry("d o c")
    # CC MR 4 (RTMR3), EV_EVENT_TAG, one SHA-384 digest, then the tagged event
    assert entry[:12] == bytes.fromhex("040000000600000001000000")
    assert entry[12:14] == bytes.fromhex("0c00")
    assert entry[14:62] == digest
    assert entry[62:66] == (8 + 5).to_bytes(4, "little")
    assert entry[66:] == bytes.fromhex("4c454141") + (5).to_bytes(4, "little") + b"d o c"


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("aael") / "ca"
    MockTdxCA.create(path)
    return path


def _verify(ca_dir: Path, evidence: Any) -> Any:
    config = MockTdxConfig(root=str(ca_dir / "root-ca.pem"))
    verifier = registry.verifier_for("mock-tdx", config)
    return verifier.verify(evidence, expected_report_data=RD, now=time.time())


def test_a_recorded_load_reaches_the_claims(ca_dir: Path) -> None:
    attester = Attester(ca_dir)
    assert _verify(ca_dir, attester.evidence(RD)).runtime_events == ()
    rtmr3 = attester.measurements["rtmr3"]
    attester.extend_runtime_measurement("modelseal.dev", "LoadModel", DIGEST)
    _entry, digest = aael_entry(load_model_event(DIGEST))
    assert (
        attester.measurements["rtmr3"] == hashlib.sha384(bytes.fromhex(rtmr3) + digest).hexdigest()
    )
    evidence = attester.evidence(RD)
    assert b64_decode(evidence["cc_eventlog"]).endswith(END_FLAG)
    claims = _verify(ca_dir, evidence)
    assert claims.runtime_events == (load_model_event(DIGEST),)
    assert claims.to_json()["runtime_events"] == [load_model_event(DIGEST)]


def _tamper_event_text(evidence: dict[str, Any], old: bytes, new: bytes) -> dict[str, Any]:
    log = b64_decode(evidence["cc_eventlog"])
    assert log.count(old) == 1
    assert len(old) == len(new)
    return {**evidence, "cc_eventlog": b64_encode(log.replace(old, new))}


def test_event_text_that_is_not_what_was_hashed_is_refused(ca_dir: Path) -> None:
    attester = Attester(ca_dir)
    attester.extend_runtime_measurement("modelseal.dev", "LoadModel", DIGEST)
    evidence = attester.evidence(RD)
    # the register still replays (digests untouched); only the text claims another model,
    # differing from the measured one in its last character
    forged = _tamper_event_text(evidence, DIGEST.encode(), DIGEST[:-1].encode() + b"f")
    with pytest.raises(EvidenceError, match="digest is not the hash of its data"):
        _verify(ca_dir, forged)


def test_an_event_missing_from_the_log_breaks_the_replay(ca_dir: Path) -> None:
    attester = Attester(ca_dir)
    attester.extend_runtime_measurement("modelseal.dev", "LoadModel", DIGEST)
    entry, _digest = aael_entry(load_model_event(DIGEST))
    attester.extend_runtime_measurement("modelseal.dev", "LoadModel", "sha256:" + "77" * 32)
    evidence = attester.evidence(RD)
    log = b64_decode(evidence["cc_eventlog"])
    dropped = {**evidence, "cc_eventlog": b64_encode(log.replace(entry, b"", 1))}
    with pytest.raises(EvidenceError, match="RTMR3"):
        _verify(ca_dir, dropped)


def test_event_parts_follow_the_agents_rules(ca_dir: Path) -> None:
    attester = Attester(ca_dir)
    with pytest.raises(FormatError):
        attester.extend_runtime_measurement("two words", "LoadModel", DIGEST)
    with pytest.raises(FormatError):
        attester.extend_runtime_measurement("modelseal.dev", "LoadModel", "a\nb")


def test_explicit_registers_cannot_be_extended(ca_dir: Path) -> None:
    attester = Attester(ca_dir, measurements={"rtmr3": "11" * 48})
    with pytest.raises(UnsupportedTee, match="runtime measurement"):
        attester.extend_runtime_measurement("modelseal.dev", "LoadModel", DIGEST)
