"""EAR token issue/verify: claims shape, trust vector, round trip of typed claims."""

from __future__ import annotations

import pytest

from modelseal._internal.clock import FixedClock
from modelseal._internal.encoding import b64url_decode, b64url_encode
from modelseal.crypto.jose.compact import split_jwt
from modelseal.crypto.jose.jwk import TeeKeyPair, recipient_from_jwk
from modelseal.crypto.jose.jwt import TokenSigningKey
from modelseal.errors import TokenError
from modelseal.kbs.tokens import TokenService, claims_from_json, trustworthiness
from modelseal.protocol.claims import Claims

JWK = {"alg": "ECDH-ES+A256KW", "crv": "P-256", "kty": "EC", "x": "X", "y": "Y"}
TDX = Claims(
    tee="tdx",
    debug=False,
    report_data=b"\x01" * 64,
    tcb_status="UpToDate",
    advisories=("INTEL-SA-1",),
    measurements={"mr_td": "ab" * 48},
    init_data={"model": "m"},
    extra={"fmspc": "00606a000000"},
)


def _service(clock: FixedClock, **kw: object) -> TokenService:
    return TokenService(
        TokenSigningKey.generate(),
        issuer="iss",
        audience="aud",
        ttl=300,
        insecure=False,
        clock=clock,
        **kw,  # type: ignore[arg-type]
    )


def test_round_trip_keeps_typed_claims() -> None:
    clock = FixedClock()
    svc = _service(clock)
    token, jti, exp = svc.issue(TDX, nonce="n", tee_pubkey=JWK)
    verified = svc.verify(token)
    assert verified.jti == jti
    assert verified.exp == exp == int(clock.now()) + 300
    assert verified.claims == TDX
    assert verified.tee_pubkey == JWK
    _, payload, _, _ = split_jwt(token)
    assert "insecure" not in payload
    assert payload["submods"]["cpu0"]["ear.status"] == "affirming"
    annotated = payload["submods"]["cpu0"]["ear.veraison.annotated-evidence"]
    assert annotated["init_data_claims"] == {"model": "m"}
    assert annotated["runtime_data_claims"] == {"nonce": "n", "tee-pubkey": JWK}


def test_insecure_server_stamps_every_token() -> None:
    svc = _service(FixedClock())
    svc.insecure = True
    token, _, _ = svc.issue(TDX, nonce="n", tee_pubkey=JWK)
    assert split_jwt(token)[1]["insecure"] is True


def test_expired_and_foreign_tokens() -> None:
    clock = FixedClock()
    svc = _service(clock)
    token, _, _ = svc.issue(TDX, nonce="n", tee_pubkey=JWK)
    other = _service(clock)
    with pytest.raises(TokenError):
        other.verify(token)
    clock.advance(306)
    with pytest.raises(TokenError, match="expired"):
        svc.verify(token)


def test_token_without_runtime_claims_is_refused() -> None:
    clock = FixedClock()
    svc = _service(clock)
    now = int(clock.now())
    bare = svc.key.sign_jwt({"iat": now, "exp": now + 10, "aud": "aud", "iss": "iss", "jti": "j"})
    with pytest.raises(TokenError, match="runtime-data"):
        svc.verify(bare)


@pytest.mark.parametrize(
    ("claims", "status"),
    [
        (TDX, "affirming"),
        (Claims(tee="tdx", debug=False, report_data=b"", tcb_status="OutOfDate"), "warning"),
        (Claims(tee="tdx", debug=True, report_data=b"", tcb_status="UpToDate"), "contraindicated"),
        (Claims(tee="sample", debug=False, report_data=b"", insecure=True), "warning"),
    ],
)
def test_trustworthiness(claims: Claims, status: str) -> None:
    assert trustworthiness(claims)[0] == status


@pytest.mark.parametrize(
    "bad",
    [
        None,
        {},
        {"tee": 1, "debug": False},
        {"tee": "t", "debug": "no"},
        {"tee": "t", "debug": False, "report_data": "zz"},
    ],
)
def test_claims_from_json_rejects(bad: object) -> None:
    with pytest.raises(TokenError):
        claims_from_json(bad)


def _gpu(i: int) -> Claims:
    measurements = {str(b): (f"{b:02x}" * 48 if b % 2 else "00" * 48) for b in range(1, 65)}
    return Claims(
        tee="nvidia",
        debug=False,
        report_data=bytes([i]) * 32,
        measurements=measurements,
        extra={
            "arch": "Hopper",
            "uuid": f"GPU-{i}",
            "cc_mode": "on",
            "driver_version": "550.90.07",
            "rim": {"driver": "match", "vbios": "match"},
            "config": {"driver_version": "550.90.07", "measurement_count": {"1": 0}},
        },
    )


def test_device_claims_travel_in_their_own_submods() -> None:
    import dataclasses

    svc = _service(FixedClock())
    gpus = tuple(_gpu(i) for i in range(2))
    token, _, _ = svc.issue(dataclasses.replace(TDX, devices=gpus), nonce="n", tee_pubkey=JWK)
    _, payload, _, _ = split_jwt(token)
    assert set(payload["submods"]) == {"cpu0", "gpu0", "gpu1"}
    assert "devices" not in payload["submods"]["cpu0"]["ear.veraison.annotated-evidence"]["tdx"]
    verified = svc.verify(token).claims
    assert verified.tee == "tdx"
    assert [d.extra["uuid"] for d in verified.devices] == ["GPU-0", "GPU-1"]
    # unused (all-zero) blocks and per-block counts stay out of the token
    assert set(verified.devices[0].measurements) == {str(b) for b in range(1, 65, 2)}
    assert "measurement_count" not in verified.devices[0].extra["config"]
    assert verified.devices[0].extra["rim"]["driver"] == "match"


def test_a_token_with_sixteen_gpus_fits_the_size_cap() -> None:
    import dataclasses

    svc = _service(FixedClock())
    devices = tuple(_gpu(i) for i in range(16))
    token, _, _ = svc.issue(dataclasses.replace(TDX, devices=devices), nonce="n", tee_pubkey=JWK)
    assert len(svc.verify(token).claims.devices) == 16


def _twin(svc: TokenService) -> TokenService:
    """Another process with the same signing key: it has issued nothing itself."""
    return TokenService(
        svc.key, issuer="iss", audience="aud", ttl=300, insecure=False, clock=svc.clock
    )


def test_remembered_token_gives_what_full_verification_gives() -> None:
    svc = _service(FixedClock())
    token, _, _ = svc.issue(TDX, nonce="n", tee_pubkey=JWK)
    assert svc.verify(token) == _twin(svc).verify(token)


def test_only_the_exact_issued_text_skips_the_signature_check() -> None:
    svc = _service(FixedClock())
    token, _, _ = svc.issue(TDX, nonce="n", tee_pubkey=JWK)
    header, _payload, signature = token.split(".")
    raw = bytearray(b64url_decode(signature))
    raw[-1] ^= 1
    with pytest.raises(TokenError):  # the signature differs in its last byte
        svc.verify(".".join([header, _payload, b64url_encode(bytes(raw))]))
    other, _, _ = svc.issue(TDX, nonce="m", tee_pubkey=JWK)
    with pytest.raises(TokenError):  # a remembered signature on another payload
        svc.verify(".".join([header, other.split(".")[1], signature]))
    assert svc.verify(token).claims == TDX


def test_remembered_token_still_expires() -> None:
    clock = FixedClock()
    svc = _service(clock)
    token, _, _ = svc.issue(TDX, nonce="n", tee_pubkey=JWK)
    clock.advance(300 + svc.leeway)
    with pytest.raises(TokenError, match="expired"):
        svc.verify(token)
    with pytest.raises(TokenError, match="expired"):
        svc.verify(token)


def test_remembered_token_keeps_the_validated_tee_key() -> None:
    svc = _service(FixedClock())
    jwk = TeeKeyPair.generate().public_jwk()
    recipient = recipient_from_jwk(jwk)
    token, _, _ = svc.issue(TDX, nonce="n", tee_pubkey=jwk, recipient=recipient)
    assert svc.verify(token).recipient is recipient
    assert _twin(svc).verify(token).recipient is None  # parsed again from the claims
