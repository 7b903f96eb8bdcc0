"""ES256 tokens through joserfc: the narrow verification rules (expiry, forgery, alg confusion)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from pathlib import Path

import pytest

from modelseal.crypto.jose.compact import split_jwt
from modelseal.crypto.jose.jwt import TokenSigningKey
from modelseal.errors import ConfigError, TokenError

NOW = 1_800_000_000.0
AUD = "kbs"
ISS = "modelseal-kbs"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _payload(**over: object) -> dict[str, object]:
    return {"iat": int(NOW), "exp": int(NOW) + 300, "aud": AUD, "iss": ISS, "jti": "j1", **over}


@pytest.fixture(scope="module")
def key() -> TokenSigningKey:
    return TokenSigningKey.generate()


def _verify(key: TokenSigningKey, token: str, now: float = NOW) -> dict[str, object]:
    return key.verify_jwt(token, now=now, audience=AUD, issuer=ISS)


def test_round_trip_and_header(key: TokenSigningKey) -> None:
    token = key.sign_jwt(_payload())
    header, _, _, sig = split_jwt(token)
    assert header == {"alg": "ES256", "typ": "JWT", "jwk": key.public_jwk()}
    assert len(sig) == 64
    assert _verify(key, token)["jti"] == "j1"


def test_jwcrypto_verifies_our_token(key: TokenSigningKey) -> None:
    from jwcrypto import jwk, jws

    token = key.sign_jwt(_payload())
    obj = jws.JWS()
    obj.deserialize(token)
    obj.verify(jwk.JWK(**key.public_jwk()))
    assert json.loads(obj.payload)["aud"] == AUD


def test_expiry_and_not_yet_valid(key: TokenSigningKey) -> None:
    token = key.sign_jwt(_payload())
    with pytest.raises(TokenError, match="expired"):
        _verify(key, token, now=NOW + 300)
    with pytest.raises(TokenError, match="not valid yet"):
        _verify(key, token, now=NOW - 10)
    with pytest.raises(TokenError, match="not valid yet"):
        _verify(key, key.sign_jwt(_payload(nbf=int(NOW) + 100)))
    assert key.verify_jwt(token, now=NOW + 302, audience=AUD, issuer=ISS, leeway=5)


@pytest.mark.parametrize(
    ("claims", "match"),
    [
        ({"aud": "other"}, "audience"),
        ({"iss": "evil"}, "issuer"),
        ({"exp": "soon"}, "exp"),
        ({"exp": True}, "exp"),
        ({"iat": 10**400}, "iat"),  # beyond float: was an OverflowError (found by fuzzing)
        ({"jti": None}, "jti"),
    ],
)
def test_claim_checks(key: TokenSigningKey, claims: dict[str, object], match: str) -> None:
    with pytest.raises(TokenError, match=match):
        _verify(key, key.sign_jwt(_payload(**claims)))


def test_audience_list(key: TokenSigningKey) -> None:
    assert _verify(key, key.sign_jwt(_payload(aud=["x", AUD])))


def test_forged_by_another_key(key: TokenSigningKey) -> None:
    other = TokenSigningKey.generate()
    with pytest.raises(TokenError, match="signature"):
        _verify(key, other.sign_jwt(_payload()))


def test_tampered_payload(key: TokenSigningKey) -> None:
    h, _, s = key.sign_jwt(_payload()).split(".")
    forged = _b64(json.dumps(_payload(jti="other")).encode())
    with pytest.raises(TokenError, match="signature"):
        _verify(key, f"{h}.{forged}.{s}")


def test_alg_none_and_hmac_confusion(key: TokenSigningKey) -> None:
    body = _b64(json.dumps(_payload()).encode())
    none = _b64(json.dumps({"alg": "none"}).encode())
    with pytest.raises(TokenError, match="ES256"):
        _verify(key, f"{none}.{body}.")
    # HS256 keyed with the public JWK (the classic confusion attack)
    hs = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    secret = json.dumps(key.public_jwk()).encode()
    mac = hmac.new(secret, f"{hs}.{body}".encode(), hashlib.sha256).digest()
    with pytest.raises(TokenError, match="ES256"):
        _verify(key, f"{hs}.{body}.{_b64(mac)}")
    crit = _b64(json.dumps({"alg": "ES256", "crit": ["x"]}).encode())
    with pytest.raises(TokenError, match="critical"):
        _verify(key, f"{crit}.{body}.{_b64(bytes(64))}")


@pytest.mark.parametrize("bad", ["", "a.b", "a.b.c.d", "!!.e30.AA", "e30.W10.AA", "x" * 20000])
def test_malformed_tokens(key: TokenSigningKey, bad: str) -> None:
    with pytest.raises(TokenError):
        _verify(key, bad)


def test_wrong_signature_length(key: TokenSigningKey) -> None:
    h, p, _ = key.sign_jwt(_payload()).split(".")
    with pytest.raises(TokenError, match="length"):
        _verify(key, f"{h}.{p}.{_b64(bytes(70))}")


def test_key_file_created_once_0600(tmp_path: Path) -> None:
    path = tmp_path / "token-signing-key.pem"
    first = TokenSigningKey.load_or_create(path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    second = TokenSigningKey.load_or_create(path)
    assert first.public_jwk() == second.public_jwk()
    token = first.sign_jwt(_payload())
    assert _verify(second, token)


def test_key_file_errors(tmp_path: Path) -> None:
    path = tmp_path / "k.pem"
    TokenSigningKey.load_or_create(path)
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        TokenSigningKey.load(path)
    garbage = tmp_path / "g.pem"
    garbage.write_bytes(b"nope")
    garbage.chmod(0o600)
    with pytest.raises(ConfigError, match="PEM"):
        TokenSigningKey.load(garbage)
    with pytest.raises(ConfigError):
        TokenSigningKey.load_or_create(tmp_path / "missing-dir" / "k.pem")
