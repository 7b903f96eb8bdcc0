"""The gateway's identity: model digests from loader receipts, evidence over its key."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import cbor2
import pytest

from modelseal.crypto.tls_identity import certificate_extension, certificate_spki
from modelseal.errors import ConfigError
from modelseal.ratls.identity import AttestedIdentity, models_from_receipts
from modelseal.ratls.wire import OID_TAGGED_EVIDENCE, decode_evidence_buffer, decode_statement
from modelseal.tee import registry

DIGEST = "sha256:" + "3c" * 32


def _receipt(path: Path, **members: object) -> Path:
    path.write_text(json.dumps({"format_version": "modelseal-receipt/1", **members}))
    return path


def test_receipts_give_sorted_unique_digests(tmp_path: Path) -> None:
    other = "sha256:" + "0a" * 32
    paths = [
        _receipt(tmp_path / "a.json", model_digest=DIGEST),
        _receipt(tmp_path / "b.json", model_digest=other),
        _receipt(tmp_path / "c.json", model_digest=DIGEST),
    ]
    assert models_from_receipts(paths) == (other, DIGEST)
    assert models_from_receipts([]) == ()


@pytest.mark.parametrize(
    "content",
    [
        b"not json",
        b"[" * 100_000,
        json.dumps({"model_digest": DIGEST}).encode(),  # no format_version
        json.dumps({"format_version": "modelseal-receipt/1"}).encode(),  # no digest
        json.dumps({"format_version": "modelseal-receipt/1", "model_digest": None}).encode(),
        json.dumps(
            {"format_version": "modelseal-receipt/1", "model_digest": "sha256:" + "3C" * 32}
        ).encode(),
        json.dumps({"format_version": "modelseal-receipt/1", "model_digest": DIGEST[:-1]}).encode(),
        b" " * (1024 * 1024 + 1),
    ],
)
def test_bad_receipts_are_config_errors(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "receipt.json"
    path.write_bytes(content)
    with pytest.raises(ConfigError):
        models_from_receipts([path])
    with pytest.raises(ConfigError, match="cannot read"):
        models_from_receipts([tmp_path / "missing.json"])


def test_certificate_evidence_binds_the_key_and_the_models() -> None:
    identity = AttestedIdentity("sample", registry.attester_for("sample"), models=[DIGEST])
    cert = identity.current.certificate
    buffer = decode_evidence_buffer(certificate_extension(cert, OID_TAGGED_EVIDENCE) or b"")
    statement = decode_statement(buffer.claims_buffer)
    assert statement.spki_hash == hashlib.sha256(certificate_spki(cert)).digest()
    assert statement.models == (DIGEST,)
    assert statement.nonce is None
    assert statement.expires - statement.issued_at == identity.lifetime
    # the sample evidence's report data is SHA-256 of the claims buffer
    envelope = json.loads(buffer.evidence)
    assert envelope["tee"] == "sample"
    reported = base64.b64decode(envelope["evidence"]["report_data"])
    assert reported.rstrip(b"\0") == hashlib.sha256(buffer.claims_buffer).digest().rstrip(b"\0")
    assert isinstance(cbor2.loads(buffer.claims_buffer), dict)


def test_lifetime_has_a_floor() -> None:
    with pytest.raises(ConfigError):
        AttestedIdentity("sample", registry.attester_for("sample"), lifetime=59)
