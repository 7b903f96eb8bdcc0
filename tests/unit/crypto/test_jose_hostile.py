"""Hostile JOSE: malformed JWE headers and JWKs, high-S ES256 twins, non-integer token times.

Tokens here are signed with the real KBS key (its PEM file, through jwcrypto as an
independent signer) over the exact bytes under test, so every refusal is the verifier's rule
and not a broken signature.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

import pytest
from jwcrypto import jwk as jw_jwk
from jwcrypto import jws as jw_jws

from modelseal.crypto.jose.jwe import decrypt, encrypt
from modelseal.crypto.jose.jwk import TeeKeyPair, ec_public_key_from_jwk, recipient_from_jwk
from modelseal.crypto.jose.jwt import P256_ORDER, TokenSigningKey, low_s
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


ALG_ENC = b'{"alg": "ECDH-ES+A256KW", "enc": "A256GCM"'


@pytest.mark.parametrize(
    "header",
    [
        ALG_ENC + b', "x": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
        b"[" * 900 + b"]" * 900,
        ALG_ENC + b', "epk": ' + b'{"a":' * 40 + b"1" + b"}" * 40 + b"}",
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
    with pytest.raises(FormatError, match=r"^JWE epk must be a JSON object$"):
        ec_public_key_from_jwk([1, 2], what="JWE epk")


# --- ES256 low-S ---------------------------------------------------------------------------


@dataclass
class Signer:
    key: TokenSigningKey
    pem: jw_jwk.JWK


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> Signer:
    path = tmp_path_factory.mktemp("token-key") / "token-signing.pem"
    key = TokenSigningKey.load_or_create(path)
    return Signer(key, jw_jwk.JWK.from_pem(path.read_bytes()))


def payload(**over: Any) -> dict[str, Any]:
    return {"iat": NOW, "exp": NOW + 300, "aud": AUD, "iss": ISS, "jti": "j1", **over}


def verify(signer: Signer, token: str) -> dict[str, Any]:
    return signer.key.verify_jwt(token, now=NOW, audience=AUD, issuer=ISS)


def split_sig(token: str) -> tuple[str, int, int]:
    signing_input, sig = token.rsplit(".", 1)
    raw = b64d(sig)
    return signing_input, int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")


def with_s(signing_input: str, r: int, s: int) -> str:
    return f"{signing_input}.{b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def raw_sign(signer: Signer, header: str, body: bytes, *, high_s: bool) -> str:
    """A compact ES256 JWS over exactly these bytes, with the half of s we ask for."""
    jws = jw_jws.JWS(body)
    jws.add_signature(signer.pem, alg="ES256", protected=header)
    signing_input, r, s = split_sig(jws.serialize(compact=True))
    low = min(s, P256_ORDER - s)
    return with_s(signing_input, r, P256_ORDER - low if high_s else low)


HEADER = '{"alg":"ES256","typ":"JWT"}'


def test_signatures_we_issue_are_low_s(signer: Signer) -> None:
    # ECDSA picks s at random: in 64 signatures about half would be high without the rule
    for i in range(64):
        token = signer.key.sign_jwt(payload(jti=f"j{i}"))
        _, _, s = split_sig(token)
        assert 0 < s <= P256_ORDER // 2
        assert verify(signer, token)["jti"] == f"j{i}"
    assert low_s(P256_ORDER - 5) == 5
    assert low_s(5) == 5


def test_the_high_s_twin_of_a_valid_signature_is_refused(signer: Signer) -> None:
    body = json.dumps(payload()).encode()
    good = raw_sign(signer, HEADER, body, high_s=False)
    twin = raw_sign(signer, HEADER, body, high_s=True)
    assert good.rsplit(".", 1)[0] == twin.rsplit(".", 1)[0]
    assert verify(signer, good)["jti"] == "j1"
    # the twin is a valid ECDSA signature of the same input for an independent verifier ...
    check = jw_jws.JWS()
    check.deserialize(twin)
    check.verify(jw_jwk.JWK(**signer.key.public_jwk()))
    # ... and still refused here
    with pytest.raises(TokenError, match="low-S"):
        verify(signer, twin)


@pytest.mark.parametrize("r_value", [0, P256_ORDER, 2**256 - 1])
def test_out_of_range_r_is_refused(signer: Signer, r_value: int) -> None:
    signing_input, _, s = split_sig(signer.key.sign_jwt(payload()))
    with pytest.raises(TokenError):
        verify(signer, with_s(signing_input, r_value, s))


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
    signer: Signer, claim: str, literal: str
) -> None:
    body = json.dumps(payload(**{claim: "@@"})).replace('"@@"', literal).encode()
    token = raw_sign(signer, HEADER, body, high_s=False)
    with pytest.raises(TokenError):
        verify(signer, token)


def test_integer_times_still_verify(signer: Signer) -> None:
    body = json.dumps(payload(nbf=NOW - 1)).encode()
    token = raw_sign(signer, HEADER, body, high_s=False)
    assert verify(signer, token)["nbf"] == NOW - 1


def test_the_signer_refuses_non_finite_claims(signer: Signer) -> None:
    with pytest.raises(ValueError):
        signer.key.sign_jwt(payload(exp=float("nan")))


def test_deep_token_segments_are_token_errors(signer: Signer) -> None:
    deep = b"[" * 5000 + b"]" * 5000
    signed = raw_sign(signer, HEADER, deep, high_s=False)  # deep payload, valid signature
    header_first = f"{b64(deep)}.{b64(b'{}')}.{b64(bytes(64))}"  # parsed before the signature
    for token in (signed, header_first):
        with pytest.raises(TokenError, match="malformed"):
            verify(signer, token)
