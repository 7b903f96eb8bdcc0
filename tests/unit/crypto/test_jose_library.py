"""The joserfc-backed JWTs: byte compatibility with the tokens issued before, and every rule
that sits on top of the library.

``data/jose_golden.json`` was produced by the hand-rolled JWS/JWE code this package replaced
(test-only keys): an EAR token, an admin token and one JWE per key algorithm. Tokens signed
now must have the same header and payload bytes (for HS256, the same token), old tokens
must still verify, and old JWEs must still decrypt - with our code and with jwcrypto.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from joserfc import jws as joserfc_jws
from joserfc.jwa import ESAlgorithm
from joserfc.jwk import ECKey, RSAKey
from jwcrypto import jwe as jw_jwe
from jwcrypto import jwk as jw_jwk
from jwcrypto import jws as jw_jws

from modelseal.crypto.jose import jwt as jose_jwt
from modelseal.crypto.jose.compact import split_jwt
from modelseal.crypto.jose.jwe import decrypt
from modelseal.crypto.jose.jwk import TeeKeyPair
from modelseal.crypto.jose.jwt import (
    P256_ORDER,
    ClaimRules,
    TokenSigningKey,
    sign_hs256,
    verify_hs256,
)
from modelseal.crypto.secret import SecretBytes
from modelseal.errors import ConfigError, TokenError
from modelseal.kbs.admin_auth import verify_admin_token

GOLDEN = json.loads((Path(__file__).parent / "data" / "jose_golden.json").read_text("utf-8"))
NOW = GOLDEN["now"]
AUD = ISS = "modelseal-kbs"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _pem_key(pem: str, *, is_rsa: bool = False) -> Any:
    """The ``cryptography`` private key in a PEM (joserfc parses it: hazmat stays in src)."""
    return (RSAKey if is_rsa else ECKey).import_key(pem).private_key


@pytest.fixture(scope="module")
def ear_key() -> TokenSigningKey:
    return TokenSigningKey(_pem_key(GOLDEN["ear"]["signing_key_pem"]))


# --- byte compatibility with the tokens and JWEs issued before --------------------------------


def test_ear_tokens_keep_their_header_and_payload_bytes(ear_key: TokenSigningKey) -> None:
    old = GOLDEN["ear"]["token"]
    new = ear_key.sign_jwt(GOLDEN["ear"]["payload"])
    assert new.rsplit(".", 1)[0] == old.rsplit(".", 1)[0]
    assert b64d(new.split(".")[0]).startswith(b'{"alg":"ES256","typ":"JWT","jwk":{"alg":"ES256",')


def test_old_ear_tokens_still_verify(ear_key: TokenSigningKey) -> None:
    payload = ear_key.verify_jwt(GOLDEN["ear"]["token"], now=NOW, audience=AUD, issuer=ISS)
    assert payload == GOLDEN["ear"]["payload"]


def test_admin_tokens_are_byte_identical_to_before() -> None:
    """HMAC is deterministic: the same header and claims give the very same token."""
    old = GOLDEN["admin"]["token"]
    secret = SecretBytes(bytes.fromhex(GOLDEN["admin"]["credential_hex"]))
    header, claims, _, _ = split_jwt(old)
    assert sign_hs256(claims, secret, kid=header["kid"]) == old
    # a publisher token minted before tenants names no namespaces: refused, not unrestricted
    with pytest.raises(TokenError, match="namespaces"):
        verify_admin_token(old, secret, now=NOW)
    claims["ns"] = ["models"]
    who = verify_admin_token(sign_hs256(claims, secret, kid=header["kid"]), secret, now=NOW)
    assert (who.subject, who.roles) == ("ci", frozenset({"publisher"}))


@pytest.mark.parametrize("case", GOLDEN["jwe"], ids=lambda c: c["key_alg"])
def test_old_jwes_decrypt_with_our_code_and_jwcrypto(case: dict[str, Any]) -> None:
    private = _pem_key(case["private_key_pem"], is_rsa=case["key_alg"] == "RSA-OAEP-256")
    keys = TeeKeyPair(case["key_alg"], private)
    plaintext = bytes.fromhex(case["plaintext_hex"])
    assert decrypt(case["jwe"], keys).reveal() == plaintext
    token = jw_jwe.JWE()
    token.deserialize(json.dumps(case["jwe"]), key=jw_jwk.JWK.from_pyca(private))
    assert token.payload == plaintext


def test_jwcrypto_verifies_our_admin_tokens() -> None:
    secret = SecretBytes(bytes(range(32)))
    token = sign_hs256(
        {"iss": "i", "aud": "a", "jti": "j", "iat": NOW, "exp": NOW + 1}, secret, kid="k"
    )
    check = jw_jws.JWS()
    check.deserialize(token)
    check.verify(jw_jwk.JWK(kty="oct", k=b64(secret.reveal())), alg="HS256")
    assert json.loads(check.payload)["jti"] == "j"


# --- the rules on top of the library ---------------------------------------------------------


def _payload(**over: Any) -> dict[str, Any]:
    return {"iat": NOW, "exp": NOW + 300, "aud": AUD, "iss": ISS, "jti": "j1", **over}


def _resign(header: dict[str, Any], body: dict[str, Any]) -> str:
    """A valid low-S ES256 signature under the KBS key over a header of our choosing
    (joserfc's plain ES256 signs any bytes; it does not read the header)."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(body).encode())}"
    signer = ECKey.import_key(GOLDEN["ear"]["signing_key_pem"])
    raw = ESAlgorithm("ES256", "P-256", 256).sign(signing_input.encode(), signer)
    s = int.from_bytes(raw[32:], "big")
    return f"{signing_input}.{b64(raw[:32] + min(s, P256_ORDER - s).to_bytes(32, 'big'))}"


@pytest.mark.parametrize(
    ("header", "match"),
    [
        ({"alg": "ES256", "typ": "JWT", "kid": "k"}, "header may only carry"),
        ({"alg": "ES256", "x5u": "https://example.invalid/k"}, "header may only carry"),
        ({"alg": "ES256", "b64": False}, "header may only carry"),
        ({"alg": "ES256", "b64": False, "crit": ["b64"]}, "critical"),
        ({"alg": "ES256", "typ": "at+jwt"}, "typ must be JWT"),
        ({"alg": "ES384"}, "not ES256"),
    ],
)
def test_ear_header_rules_hold_under_a_valid_signature(
    ear_key: TokenSigningKey, header: dict[str, Any], match: str
) -> None:
    token = _resign(header, _payload())
    with pytest.raises(TokenError, match=match):
        ear_key.verify_jwt(token, now=NOW, audience=AUD, issuer=ISS)


def test_a_minimal_valid_header_verifies(ear_key: TokenSigningKey) -> None:
    token = _resign({"alg": "ES256"}, _payload())
    assert ear_key.verify_jwt(token, now=NOW, audience=AUD, issuer=ISS)["jti"] == "j1"


def test_the_library_itself_refuses_high_s_and_other_algorithms(ear_key: TokenSigningKey) -> None:
    """Defence in depth: the registry the verifier hands joserfc refuses the high-S twin and
    every algorithm but ES256 on its own, before any check of ours."""
    good = ear_key.sign_jwt(_payload())
    signing_input, sig = good.rsplit(".", 1)
    raw = b64d(sig)
    high = (P256_ORDER - int.from_bytes(raw[32:], "big")).to_bytes(32, "big")
    twin = f"{signing_input}.{b64(raw[:32] + high)}"
    verifier = ECKey.import_key(ear_key.public_key)
    registry = jose_jwt._ES256_ONLY
    assert joserfc_jws.deserialize_compact(good, verifier, registry=registry)
    with pytest.raises(Exception, match="signature"):
        joserfc_jws.deserialize_compact(twin, verifier, registry=registry)
    none = b64(b'{"alg":"none"}') + "." + good.split(".")[1] + "."
    with pytest.raises(Exception, match=r"not allowed|not supported"):
        joserfc_jws.deserialize_compact(none, verifier, registry=registry)
    # joserfc's own default registry is left as it was
    assert type(joserfc_jws.default_registry.algorithms["ES256"]) is not type(
        registry.algorithms["ES256"]
    )


def test_signing_keys_must_be_p256() -> None:
    with pytest.raises(ConfigError, match="P-256"):
        TokenSigningKey(TeeKeyPair.generate("ECDH-ES+A256KW-P384").private_key)  # type: ignore[arg-type]


def test_an_rsa_pem_is_not_a_signing_key(tmp_path: Path) -> None:
    path = tmp_path / "rsa.pem"
    path.write_bytes(RSAKey.import_key(GOLDEN["jwe"][2]["private_key_pem"]).as_pem(private=True))
    path.chmod(0o600)
    with pytest.raises(ConfigError, match="EC P-256"):
        TokenSigningKey.load(path)


HS_KEY = SecretBytes(bytes(range(1, 33)))
HS_RULES = ClaimRules(issuer=ISS, audience=AUD, audience_lists=False, what="admin token")


def _hs_forge(header: dict[str, Any], claims: dict[str, Any]) -> str:
    h, p = b64(json.dumps(header).encode()), b64(json.dumps(claims).encode())
    mac = hmac.new(HS_KEY.reveal(), f"{h}.{p}".encode(), hashlib.sha256).digest()
    return f"{h}.{p}.{b64(mac)}"


def _hs_verify(token: str) -> dict[str, Any]:
    return verify_hs256(token, HS_KEY, rules=HS_RULES, now=NOW, max_chars=4096)


def test_hs256_round_trip_and_pinning(ear_key: TokenSigningKey) -> None:
    assert _hs_verify(sign_hs256(_payload(), HS_KEY, kid="k"))["jti"] == "j1"
    with pytest.raises(TokenError, match="not HS256"):
        _hs_verify(ear_key.sign_jwt(_payload()))  # an ES256 token for the HMAC verifier
    with pytest.raises(TokenError, match="not HS256"):
        _hs_verify(_hs_forge({"alg": "HS512"}, _payload()))
    with pytest.raises(TokenError, match="header may only carry"):
        _hs_verify(_hs_forge({"alg": "HS256", "jwk": {"kty": "oct"}}, _payload()))


@pytest.mark.parametrize(
    "claims",
    [
        _payload(nbf=None),
        _payload(iat=-1),
        _payload(exp=float(NOW + 300)),
        _payload(exp=2**53),
        _payload(aud=[AUD]),
        _payload(jti=""),
        _payload(iss=ISS + "x"),
    ],
)
def test_hs256_claim_rules(claims: dict[str, Any]) -> None:
    with pytest.raises(TokenError):
        _hs_verify(_hs_forge({"alg": "HS256"}, claims))


def test_lifetime_cap() -> None:
    rules = ClaimRules(issuer=ISS, audience=AUD, max_lifetime=60, what="admin token")
    token = sign_hs256(_payload(exp=NOW + 61), HS_KEY, kid="k")
    with pytest.raises(TokenError, match="lifetime"):
        verify_hs256(token, HS_KEY, rules=rules, now=NOW, max_chars=4096)


def test_the_loader_never_imports_the_jws_library() -> None:
    """The loader reads tokens with ``compact`` only; joserfc would cost it start-up time."""
    code = (
        "import sys\n"
        "import modelseal.loader.kbs_client, modelseal.loader.loader, modelseal.loader.sdk\n"
        "assert 'modelseal.crypto.jose.jwe' in sys.modules\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'joserfc'))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"
