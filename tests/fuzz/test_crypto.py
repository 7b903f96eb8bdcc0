"""Fuzz targets: the JOSE objects peers send (the TEE's public JWK, the KBS's JWE resource
response, the KBS's own EAR tokens presented back to it)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from functools import cache
from typing import Any

import pytest
from hypothesis import strategies as st

from modelseal._internal.clock import FixedClock
from modelseal._internal.encoding import b64url_encode
from modelseal.crypto.cnap_wrap import WorkloadKey, WorkloadKeyPair
from modelseal.crypto.jose.compact import split_jwt
from modelseal.crypto.jose.jwe import decrypt, encrypt
from modelseal.crypto.jose.jwk import TeeKeyPair, recipient_from_jwk
from modelseal.crypto.jose.jwt import TokenSigningKey
from modelseal.crypto.secret import SecretBytes
from modelseal.kbs.admin_auth import mint_admin_token, verify_admin_token
from modelseal.kbs.tokens import TokenService
from modelseal.protocol.claims import Claims
from tests.fuzz.harness import HOSTILE_TEXT, Target, json_input, json_mutated, run, text_input

NOW = 1_790_000_000.0
CLAIMS = Claims(
    tee="tdx",
    debug=False,
    report_data=b"\x01" * 64,
    tcb_status="UpToDate",
    advisories=("INTEL-SA-1",),
    measurements={"mr_td": "ab" * 48},
    init_data={"model": "m"},
    extra={"fmspc": "00606a000000"},
)


@cache
def _pairs() -> tuple[TeeKeyPair, ...]:
    return (TeeKeyPair.generate("ECDH-ES+A256KW-P256"), TeeKeyPair.generate("RSA-OAEP-256"))


@cache
def _tokens() -> TokenService:
    return TokenService(
        TokenSigningKey.generate(),
        issuer="kbs",
        audience="kbs",
        ttl=300,
        insecure=False,
        clock=FixedClock(NOW),
    )


def _jwe_docs() -> list[Any]:
    return [encrypt(b"\x07" * 32, recipient_from_jwk(p.public_jwk())) for p in _pairs()]


def _jwe_decrypt(data: bytes) -> object:
    """Decrypt with the key whose algorithm the document names (EC for most mutations)."""
    ec_pair, rsa_pair = _pairs()
    pair = rsa_pair if b"RSA-OAEP" in data[:2000] else ec_pair
    return json_input(lambda doc: decrypt(doc, pair))(data)


def _jwe_with_header(protected: bytes) -> bytes:
    """A JWE whose protected header is ``protected`` (the other members are well formed)."""
    members = ("encrypted_key", "iv", "ciphertext", "tag")
    doc = {"protected": b64url_encode(protected), **{m: b64url_encode(bytes(16)) for m in members}}
    return json.dumps(doc).encode()


def _real_tokens() -> list[bytes]:
    svc = _tokens()
    jwk = _pairs()[0].public_jwk()
    return [svc.issue(CLAIMS, nonce="bm9uY2U=", tee_pubkey=jwk)[0].encode()]


def _payloads() -> list[Any]:
    _, payload, _, _ = split_jwt(_real_tokens()[0].decode())
    return [payload]


def _signed_payload(data: bytes) -> object:
    """What the KBS's verification path does with a payload that carries a valid signature:
    the KBS signs the mutated payload, so everything after the signature check is reached."""
    try:
        payload = json.loads(data)
    except (ValueError, RecursionError):
        return None
    if not isinstance(payload, dict):
        return None
    svc = _tokens()
    try:
        token = svc.key.sign_jwt(payload)
    except UnicodeEncodeError:  # lone surrogates: no JSON text, so no token, carries them
        return None
    except ValueError:  # NaN/Infinity: the KBS signs strict JSON only, so no token has them
        return None
    return svc.verify(token)


@st.composite
def _token_parts(draw: st.DrawFn) -> bytes:
    """A real token with one segment replaced by base64url of mutated or random JSON."""
    parts = _real_tokens()[0].decode().split(".")
    i = draw(st.integers(0, 2))
    raw = draw(json_mutated(_payloads()) | st.binary(max_size=200))
    parts[i] = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    return ".".join(parts).encode()


@cache
def _workload_keys() -> tuple[bytes, ...]:
    """A workload's RSA public key as CNAP (DER SPKI) and ITA (exponent, modulus) send it."""
    key = WorkloadKeyPair(3072).public
    return (key.spki_der(), key.ita_bytes())


ADMIN_KEY = SecretBytes(bytes(range(32)))


def _admin_tokens() -> list[bytes]:
    return [
        mint_admin_token(ADMIN_KEY, role=role, now=NOW).encode() for role in ("admin", "auditor")
    ]


def _admin_signed(data: bytes) -> object:
    """An admin token whose (fuzzed) payload carries a valid HMAC: the claim checks."""
    header = b64url_encode(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    signing_input = f"{header}.{b64url_encode(data)}".encode()
    mac = hmac.new(ADMIN_KEY.reveal(), signing_input, hashlib.sha256).digest()
    return verify_admin_token(f"{signing_input.decode()}.{b64url_encode(mac)}", ADMIN_KEY, now=NOW)


def _admin_payloads() -> list[Any]:
    return [json.loads(base64.urlsafe_b64decode(t.split(b".")[1] + b"==")) for t in _admin_tokens()]


TARGETS = [
    Target(
        "admin-token",
        text_input(lambda t: verify_admin_token(t, ADMIN_KEY, now=NOW)),
        _admin_tokens,
        # nesting deep enough to exhaust the recursion limit, short enough to pass the length cap
        hostile=[b64url_encode(b"[" * 2_500).encode() + b".e30.AA"],
    ),
    Target(
        "admin-token-claims",
        _admin_signed,
        lambda: [json.dumps(p).encode() for p in _admin_payloads()],
        extra=lambda: json_mutated(_admin_payloads()),
        hostile=HOSTILE_TEXT,
    ),
    Target("cnap-workload-key", WorkloadKey.from_user_data, _workload_keys),
    Target(
        "jwk-recipient",
        json_input(recipient_from_jwk),
        lambda: [json.dumps(p.public_jwk()).encode() for p in _pairs()],
        extra=lambda: json_mutated([p.public_jwk() for p in _pairs()]),
    ),
    Target(
        "jwe-decrypt",
        _jwe_decrypt,
        lambda: [json.dumps(d).encode() for d in _jwe_docs()],
        extra=lambda: json_mutated(_jwe_docs()),
        hostile=[_jwe_with_header(h) for h in (b"[" * 5_000, b"9" * 5_000)],
    ),
    Target("jwt-split", text_input(split_jwt), _real_tokens, extra=_token_parts),
    Target(
        "token-verify",
        text_input(lambda t: _tokens().verify(t)),
        _real_tokens,
        extra=_token_parts,
    ),
    Target(
        "token-claims",
        _signed_payload,
        lambda: [json.dumps(p).encode() for p in _payloads()],
        extra=lambda: json_mutated(_payloads()),
        hostile=HOSTILE_TEXT[2:],
    ),
]

pytestmark = pytest.mark.fuzz


@pytest.mark.parametrize("target", TARGETS, ids=str)
def test_fuzz(target: Target) -> None:
    run(target)
