"""Admin bearer tokens: HS256 only, exp/iat/nbf with leeway, roles, lifetime cap."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from pathlib import Path

import pytest

from modelseal._internal.encoding import b64url_encode
from modelseal.crypto.secret import SecretBytes
from modelseal.errors import AuthorizationError, ConfigError, TokenError
from modelseal.kbs.admin_auth import (
    LEEWAY,
    MAX_TTL,
    ensure_admin_credential,
    load_admin_credential,
    mint_admin_token,
    verify_admin_token,
)

KEY = SecretBytes(os.urandom(32))
NOW = 1_800_000_000.0


def _forge(header: dict[str, object], claims: dict[str, object], key: bytes) -> str:
    h = b64url_encode(json.dumps(header).encode())
    p = b64url_encode(json.dumps(claims).encode())
    sig = hmac.new(key, f"{h}.{p}".encode(), hashlib.sha256).digest()
    return f"{h}.{p}.{b64url_encode(sig)}"


def _claims(**over: object) -> dict[str, object]:
    base: dict[str, object] = {
        "iss": "modelseal-kbs",
        "aud": "modelseal-kbs-admin",
        "sub": "me",
        "roles": ["admin"],
        "iat": int(NOW),
        "exp": int(NOW) + 60,
        "jti": "j",
    }
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def test_round_trip() -> None:
    token = mint_admin_token(
        KEY, role="publisher", ttl=120, subject="ci", namespaces=["models"], now=NOW
    )
    who = verify_admin_token(token, KEY, now=NOW + 10)
    assert who.subject == "ci"
    assert who.roles == frozenset({"publisher"})
    assert who.actor == "admin:ci"
    who.require(frozenset({"admin", "publisher"}))
    with pytest.raises(AuthorizationError):
        who.require(frozenset({"admin"}))
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    assert header["alg"] == "HS256"
    assert KEY.reveal().hex() not in token


def test_expiry_with_leeway() -> None:
    token = mint_admin_token(KEY, ttl=60, now=NOW)
    verify_admin_token(token, KEY, now=NOW + 60 + LEEWAY - 1)
    with pytest.raises(TokenError, match="expired"):
        verify_admin_token(token, KEY, now=NOW + 60 + LEEWAY)


def test_not_yet_valid() -> None:
    token = mint_admin_token(KEY, ttl=60, now=NOW + 1000)
    with pytest.raises(TokenError, match="not valid yet"):
        verify_admin_token(token, KEY, now=NOW)
    early = _forge({"alg": "HS256"}, _claims(nbf=int(NOW) + 500), KEY.reveal())
    with pytest.raises(TokenError, match="not valid yet"):
        verify_admin_token(early, KEY, now=NOW)


def test_deeply_nested_header_is_a_token_error() -> None:
    """Parsed before the signature check, so anyone could send it; it raised RecursionError
    (found by fuzzing)."""
    token = b64url_encode(b"[" * 2_500) + ".e30.AA"
    with pytest.raises(TokenError, match="header is malformed"):
        verify_admin_token(token, KEY, now=NOW)


def test_wrong_key() -> None:
    token = mint_admin_token(KEY, now=NOW)
    with pytest.raises(TokenError, match="signature"):
        verify_admin_token(token, SecretBytes(os.urandom(32)), now=NOW)


@pytest.mark.parametrize(
    "header",
    [
        {"alg": "none"},
        {"alg": "HS512"},
        {"alg": "ES256"},
        {"alg": "HS256", "jku": "https://evil"},
        {"alg": "HS256", "typ": "at+jwt"},
        {},
    ],
)
def test_header_confusion(header: dict[str, object]) -> None:
    with pytest.raises(TokenError):
        verify_admin_token(_forge(header, _claims(), KEY.reveal()), KEY, now=NOW)


@pytest.mark.parametrize(
    "claims",
    [
        _claims(iss="other"),
        _claims(aud="modelseal-kbs"),
        _claims(roles=["root"]),
        _claims(roles=[]),
        _claims(roles="admin"),
        _claims(exp=None),
        _claims(iat=None),
        _claims(exp="soon"),
        _claims(iat=True),
        _claims(exp=int(NOW) + MAX_TTL + 10),
        _claims(sub=""),
        _claims(sub=None),
        _claims(sub="evil\nlog line"),
        _claims(jti=None),
        _claims(nbf="later"),
        _claims(nbf=int(NOW) + 3600),
        _claims(exp=float(int(NOW) + 60)),
        _claims(exp=int(NOW) - 3600),
        _claims(iat=int(NOW) + 3600, exp=int(NOW) + 3700),
        _claims(aud=["modelseal-kbs-admin"]),
        _claims(roles=["admin", "root"]),
    ],
)
def test_claim_checks(claims: dict[str, object]) -> None:
    with pytest.raises(TokenError):
        verify_admin_token(_forge({"alg": "HS256"}, claims, KEY.reveal()), KEY, now=NOW)


@pytest.mark.parametrize(
    "token",
    [
        "",
        "a",
        "a.b",
        "a.b.c.d",
        "!!.!!.!!",
        "e30.e30.",
        "W10.e30.AA",
        "x" * 5000 + ".a.b",
        "e30.\xe9e30.AA",
        "e30.e30.\u00e9",
    ],
)
def test_malformed(token: str) -> None:
    with pytest.raises(TokenError):
        verify_admin_token(token, KEY, now=NOW)


def test_mint_limits() -> None:
    with pytest.raises(ConfigError):
        mint_admin_token(KEY, role="root", now=NOW)
    with pytest.raises(ConfigError):
        mint_admin_token(KEY, ttl=MAX_TTL + 1, now=NOW)
    with pytest.raises(ConfigError):
        mint_admin_token(KEY, ttl=0, now=NOW)


def test_credential_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="start the KBS once"):
        load_admin_credential(tmp_path)
    key = ensure_admin_credential(tmp_path)
    assert ensure_admin_credential(tmp_path) == key
    assert load_admin_credential(tmp_path) == key
    assert (tmp_path / "admin-credential").stat().st_mode & 0o777 == 0o600


def test_non_ascii_payload_of_a_real_token_is_a_token_error() -> None:
    h, p, sig = mint_admin_token(KEY, now=NOW).split(".")
    with pytest.raises(TokenError):
        verify_admin_token(f"{h}.\xe9{p}.{sig}", KEY, now=NOW)
