"""Runtime-data binding: the vector of Trustee's attestation service, and our own vectors."""

from __future__ import annotations

import hashlib
import json

from hypothesis import given
from hypothesis import strategies as st

from modelseal._internal.canonical import canonical_json
from modelseal.protocol.binding import device_digest, runtime_data_digest

JWK = {"alg": "ECDH-ES+A256KW", "crv": "P-256", "kty": "EC", "x": "X", "y": "Y"}


def test_attestation_service_vector() -> None:
    value = {"b": 1, "a": "test", "c": {"d": "e"}}
    assert canonical_json(value) == b'{"a":"test","b":1,"c":{"d":"e"}}'
    assert hashlib.sha384(canonical_json(value)).hexdigest() == (
        "e71ce8e70d814ba6639c3612ebee0ff1f76f650f8dbb5e47157e0f3f525cd22c"
        "4597480a186427c813ca941da78870c3"
    )


def test_canonical_form_of_the_binding() -> None:
    jwk = {"y": "Y", "x": "X", "kty": "EC", "crv": "P-256", "alg": "ECDH-ES+A256KW"}
    expected = (
        b'{"additional-evidence":"","nonce":"NONCE","tee-pubkey":'
        b'{"alg":"ECDH-ES+A256KW","crv":"P-256","kty":"EC","x":"X","y":"Y"}}'
    )
    assert runtime_data_digest("NONCE", jwk) == hashlib.sha384(expected).digest()
    assert len(runtime_data_digest("NONCE", jwk)) == 48


def test_device_digest_has_no_additional_evidence() -> None:
    expected = (
        b'{"nonce":"N","tee-pubkey":'
        b'{"alg":"ECDH-ES+A256KW","crv":"P-256","kty":"EC","x":"X","y":"Y"}}'
    )
    assert device_digest("N", JWK) == hashlib.sha384(expected).digest()


def test_additional_evidence_changes_the_digest() -> None:
    ae = json.dumps({"nvidia": {"evidence": "..."}})
    assert runtime_data_digest("N", JWK, ae) != runtime_data_digest("N", JWK, "")


def test_other_hashes() -> None:
    assert len(runtime_data_digest("N", JWK, hash_alg="sha512")) == 64
    assert len(runtime_data_digest("N", JWK, hash_alg="sha256")) == 32


@given(st.text(max_size=60), st.text(max_size=60))
def test_any_change_of_nonce_or_key_changes_the_digest(a: str, b: str) -> None:
    if a != b:
        assert runtime_data_digest(a, JWK) != runtime_data_digest(b, JWK)
        assert runtime_data_digest("N", {**JWK, "x": a}) != runtime_data_digest(
            "N", {**JWK, "x": b}
        )


def test_unknown_hash_refused() -> None:
    import pytest

    from modelseal.errors import FormatError

    with pytest.raises(FormatError):
        runtime_data_digest("N", JWK, hash_alg="md5")
