"""Hostile JOSE: malformed JWE headers and JWKs, high-S ES256 twins, non-integer token times.

Tokens here are signed with the real KBS key over the exact bytes under test, so every
refusal is the verifier's rule and not a broken signature.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from modelseal.crypto.jwe import decrypt, encrypt
from modelseal.crypto.jwk import TeeKeyPair, ec_public_key_from_jwk, recipient_from_jwk
from modelseal.crypto.signing import P256_ORDER, TokenSigningKey, low_s
from modelseal.errors import FormatError, TokenError

NOW = 1_800_000_000
AUD, ISS = "kbs", "modelseal-kbs"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# --- JWE / JWK ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keys() -> TeeKeyPair:
    return TeeKeyPair.generate()


def with_header(jwe: dict[str, str], header: bytes) -> dict[str, str]:
    return {**jwe, "protected": b64(header)}


@pytest.mark.parametrize(
    "epk",
    [[1, 2], "EC", 7, None, True, {"crv": ["P-256"], "x": "AA", "y": "AA"}, {"crv": "P-256"},
     {"kty": "RSA", "crv": "P-256", "x": "AA", "y": "AA"},
     {"crv": "P-256", "x": {"a": 1}, "y": "AA"}, {"crv": "P-256", "x": "A" * 5000, "y": "A"},
     {"crv": "P-256", "x": "!!", "y": "AA"}, {"crv": "P-999", "x": "AA", "y": "AA"}],
)  # fmt: skip
def test_any_malformed_epk_is_a_format_error(keys: TeeKeyPair, epk: Any) -> None:
    jwe = encrypt(b"k" * 32, recipient_from_jwk(keys.public_jwk()))
    header = json.dumps({"alg": "ECDH-ES+A256KW", "enc": "A256GCM", "epk": epk}).encode()
    with pytest.raises(FormatError, match="JWE epk"):
        decrypt(with_header(jwe, header), keys)


@pytest.mark.parametrize(
    "header",
    [
        b'{"alg": "ECDH-ES+A256KW", "enc": "A256GCM", "x": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
        b"[" * 900 + b"]" * 900,
        b'{"alg": "ECDH-ES+A256KW", "enc": "A256GCM", "epk": ' + b'{"a":' * 40 + b"1" + b"}" * 40 + b"}",
        b'{"alg": NaN}',
        b"\xff\xfe",
        b'"just a string"',
    ],
    ids=["deep-array", "deep-900", "deep-epk", "nan", "not-utf8", "not-object"],
)  # fmt: skip
def test_hostile_protected_headers_are_format_errors(keys: TeeKeyPair, header: bytes) -> None:
    jwe = encrypt(b"k" * 32, recipient_from_jwk(keys.public_jwk()))
    with pytest.raises(FormatError) as raised:
        decrypt(with_header(jwe, header), keys)
    assert "JWE" in str(raised.value)


@pytest.mark.parametrize(
    "jwk",
    [
        [1, 2],
        {"kty": ["EC"]},
        {"kty": "EC", "alg": {"x": 1}, "crv": "P-256", "x": "AA", "y": "AA"},
        {"kty": "EC", "crv": None, "x": "AA", "y": "AA"},
        {"kty": "RSA", "n": 5, "e": "AQAB"},
        {"kty": "RSA", "n": "A" * 10_000, "e": "AQAB"},
        {"kty": "oct", "k": "AA"},
    ],
)
def test_malformed_tee_pubkeys_are_format_errors_without_values(jwk: Any) -> None:
    with pytest.raises(FormatError) as raised:
        recipient_from_jwk(jwk)
    message = str(raised.value)
    assert message.startswith("tee-pubkey")
    assert "AAAA" not in message
    assert "{'x': 1}" not in message


def test_epk_parser_names_its_document() -> None:
    with pytest.raises(FormatError, match="^JWE epk must be a JSON object$"):
        ec_public_key_from_jwk([1, 2], what="JWE epk")


# --- ES256 low-S ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def signer() -> TokenSigningKey:
    return TokenSigningKey.generate()


def payload(**over: Any) -> dict[str, Any]:
    return {"iat": NOW, "exp": NOW + 300, "aud": AUD, "iss": ISS, "jti": "j1", **over}


def verify(signer: TokenSigningKey, token: str) -> dict[str, Any]:
    return signer.verify_jwt(token, now=NOW, audience=AUD, issuer=ISS)


def raw_sign(signer: TokenSigningKey, header: bytes, body: bytes, *, high_s: bool) -> str:
    """A compact JWS over exactly these segment bytes, with the s of our choice."""
    signing_input = f"{b64(header)}.{b64(body)}"
    der = signer._key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    s = low_s(s)
    if high_s:
        s = P256_ORDER - s
    return f"{signing_input}.{b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def test_signatures_we_issue_are_low_s(signer: TokenSigningKey) -> None:
    # ECDSA picks s at random: in 64 signatures about half would be high without the rule
    for i in range(64):
        token = signer.sign_jwt(payload(jti=f"j{i}"))
        s = int.from_bytes(b64d(token.rsplit(".", 1)[1])[32:], "big")
        assert 0 < s <= P256_ORDER // 2
        assert verify(signer, token)["jti"] == f"j{i}"


def test_the_high_s_twin_of_a_valid_signature_is_refused(signer: TokenSigningKey) -> None:
    header = json.dumps({"alg": "ES256", "typ": "JWT"}).encode()
    body = json.dumps(payload()).encode()
    good = raw_sign(signer, header, body, high_s=False)
    twin = raw_sign(signer, header, body, high_s=True)
    assert verify(signer, good)["jti"] == "j1"
    # the twin is a mathematically valid ECDSA signature of the same input ...
    r = int.from_bytes(b64d(twin.rsplit(".", 1)[1])[:32], "big")
    s = int.from_bytes(b64d(twin.rsplit(".", 1)[1])[32:], "big")
    signer.public_key.verify(
        encode_dss_signature(r, s), twin.rsplit(".", 1)[0].encode(), ec.ECDSA(hashes.SHA256())
    )
    # ... and still refused
    with pytest.raises(TokenError, match="low-S"):
        verify(signer, twin)


@pytest.mark.parametrize("r_value", [0, P256_ORDER, 2**256 - 1])
def test_out_of_range_r_is_refused(signer: TokenSigningKey, r_value: int) -> None:
    token = signer.sign_jwt(payload())
    head, body, sig = token.split(".")
    forged = b64(r_value.to_bytes(32, "big") + b64d(sig)[32:])
    with pytest.raises(TokenError):
        verify(signer, f"{head}.{body}.{forged}")


# --- time claims ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("claim", "literal"),
    [
        ("exp", "NaN"),
        ("exp", "Infinity"),
        ("exp", "-Infinity"),
        ("exp", "1e400"),
        ("exp", f"{NOW + 300}.5"),
        ("exp", f"{NOW + 300}.0"),
        ("exp", "true"),
        ("exp", f'"{NOW + 300}"'),
        ("exp", "null"),
        ("exp", str(2**63)),
        ("iat", "NaN"),
        ("iat", f"{NOW}.0"),
        ("iat", "false"),
        ("iat", "-1"),
        ("nbf", "NaN"),
        ("nbf", f"{NOW}.25"),
        ("nbf", "[1]"),
    ],
)
def test_time_claims_must_be_integers_even_when_signed(
    signer: TokenSigningKey, claim: str, literal: str
) -> None:
    body = json.dumps(payload(**{claim: "@@"})).replace('"@@"', literal).encode()
    token = raw_sign(signer, b'{"alg":"ES256","typ":"JWT"}', body, high_s=False)
    with pytest.raises(TokenError):
        verify(signer, token)


def test_integer_times_still_verify(signer: TokenSigningKey) -> None:
    body = json.dumps(payload(nbf=NOW - 1)).encode()
    token = raw_sign(signer, b'{"alg":"ES256","typ":"JWT"}', body, high_s=False)
    assert verify(signer, token)["nbf"] == NOW - 1


def test_the_signer_refuses_non_finite_claims(signer: TokenSigningKey) -> None:
    with pytest.raises(ValueError):
        signer.sign_jwt(payload(exp=float("nan")))


def test_deep_token_segments_are_token_errors(signer: TokenSigningKey) -> None:
    deep = b"[" * 5000 + b"]" * 5000
    for header, body in ((deep, b"{}"), (b'{"alg":"ES256"}', deep)):
        token = raw_sign(signer, header, body, high_s=False)
        with pytest.raises(TokenError, match="malformed"):
            verify(signer, token)
