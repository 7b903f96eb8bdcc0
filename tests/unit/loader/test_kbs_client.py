"""KbsClient against a scripted KBS (httpx.MockTransport): caching, re-attestation, errors."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest

from modelseal.crypto.jose.jwe import encrypt
from modelseal.crypto.jose.jwk import recipient_from_jwk
from modelseal.crypto.jose.jwt import TokenSigningKey
from modelseal.errors import (
    AttestationError,
    ConfigError,
    FormatError,
    NotFound,
    PolicyDenied,
    TokenError,
    TransientError,
    UnsupportedTee,
)
from modelseal.loader.kbs_client import KbsClient
from modelseal.protocol.binding import runtime_data_digest
from modelseal.tee.sample.attester import Attester

DEK = b"\x07" * 32
NONCE = "A" * 43 + "="


class FakeKbs:
    """Just enough KBS to drive the client: checks the binding, signs tokens, wraps DEKs."""

    def __init__(self) -> None:
        self.key = TokenSigningKey.generate()
        self.calls: list[str] = []
        self.tee_pubkey: dict[str, str] | None = None
        self.resource_status: list[int] = []
        self.ttl = 300
        self.auth_response: httpx.Response | None = None

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.calls.append(request.url.path)
        if request.url.path == "/kbs/v0/auth":
            if self.auth_response is not None:
                return self.auth_response
            body = json.loads(request.content)
            assert body == {"version": "0.4.0", "tee": "sample", "extra-params": ""}
            return httpx.Response(
                200,
                json={"nonce": NONCE, "extra-params": ""},
                headers={"Set-Cookie": "kbs-session-id=abc; Path=/kbs; HttpOnly"},
            )
        if request.url.path == "/kbs/v0/attest":
            assert request.headers["cookie"] == "kbs-session-id=abc"
            body = json.loads(request.content)
            jwk = body["runtime-data"]["tee-pubkey"]
            expected = Attester().evidence(runtime_data_digest(NONCE, jwk))
            assert body["tee-evidence"]["primary_evidence"] == expected
            self.tee_pubkey = jwk
            token = self.key.sign_jwt({"iat": 1, "exp": 1 + self.ttl, "jti": f"t{len(self.calls)}"})
            return httpx.Response(200, json={"token": token})
        assert request.headers["authorization"].startswith("Bearer ")
        status = self.resource_status.pop(0) if self.resource_status else 200
        if status != 200:
            return httpx.Response(status, json={"type": "x", "detail": f"status {status}"})
        assert self.tee_pubkey is not None
        return httpx.Response(200, json=encrypt(DEK, recipient_from_jwk(self.tee_pubkey)))


@pytest.fixture
def fake() -> FakeKbs:
    return FakeKbs()


@pytest.fixture
def make_client(fake: FakeKbs) -> Callable[..., KbsClient]:
    def make(**kw: object) -> KbsClient:
        return KbsClient(
            "http://kbs.test",
            Attester(),
            tee="sample",
            transport=httpx.MockTransport(fake.handler),
            **kw,  # type: ignore[arg-type]
        )

    return make


def test_token_cached_between_requests(
    fake: FakeKbs, make_client: Callable[..., KbsClient]
) -> None:
    with make_client() as client:
        assert client.get_resource("models/m/1").reveal() == DEK
        assert client.get_resource("models/m/1").reveal() == DEK
        assert client.handshakes == 1
        assert client.token_id == "t2"
    assert fake.calls == [
        "/kbs/v0/auth",
        "/kbs/v0/attest",
        "/kbs/v0/resource/models/m/1",
        "/kbs/v0/resource/models/m/1",
    ]


def test_reattests_only_on_401(fake: FakeKbs, make_client: Callable[..., KbsClient]) -> None:
    with make_client() as client:
        client.get_resource("models/m/1")
        fake.resource_status = [401]
        assert client.get_resource("models/m/1").reveal() == DEK
        assert client.handshakes == 2
        fake.resource_status = [403]
        with pytest.raises(PolicyDenied):
            client.get_resource("models/m/1")
        assert client.handshakes == 2  # a denial never triggers re-attestation


def test_persistent_401_is_token_error(
    fake: FakeKbs, make_client: Callable[..., KbsClient]
) -> None:
    with make_client() as client:
        fake.resource_status = [401, 401]
        with pytest.raises(TokenError):
            client.get_resource("models/m/1")


@pytest.mark.parametrize(
    ("status", "error"),
    [(404, NotFound), (400, FormatError), (500, TransientError), (503, TransientError)],
)
def test_status_mapping(
    fake: FakeKbs, make_client: Callable[..., KbsClient], status: int, error: type[Exception]
) -> None:
    with make_client() as client:
        fake.resource_status = [status]
        with pytest.raises(error):
            client.get_resource("models/m/1")


def test_handshake_failures(fake: FakeKbs, make_client: Callable[..., KbsClient]) -> None:
    fake.auth_response = httpx.Response(
        401, json={"type": "x", "detail": "TEE kind not accepted by this KBS"}
    )
    with make_client() as client, pytest.raises(UnsupportedTee):
        client.get_resource("models/m/1")
    fake.auth_response = httpx.Response(401, json={"type": "x", "detail": "attestation failed"})
    with make_client() as client, pytest.raises(AttestationError):
        client.get_resource("models/m/1")
    fake.auth_response = httpx.Response(503, json={"type": "x", "detail": "later"})
    with make_client() as client, pytest.raises(TransientError):
        client.get_resource("models/m/1")
    fake.auth_response = httpx.Response(200, json={"nonce": NONCE, "extra-params": ""})
    with make_client() as client, pytest.raises(AttestationError, match="cookie"):
        client.get_resource("models/m/1")


def test_connection_error_is_transient() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with (
        KbsClient(
            "http://user:s3cret@kbs.test:8080/base",
            Attester(),
            tee="sample",
            transport=httpx.MockTransport(refuse),
        ) as c,
        pytest.raises(TransientError) as info,
    ):
        c.get_resource("models/m/1")
    # the message names the endpoint, never the credential in the URL
    assert "http://kbs.test:8080/base/kbs/v0/auth" in str(info.value)
    assert "ConnectError" in str(info.value)
    assert "s3cret" not in str(info.value)
    assert "user" not in str(info.value)


def test_bad_inputs(make_client: Callable[..., KbsClient]) -> None:
    with pytest.raises(ConfigError):
        KbsClient("ftp://x", Attester(), tee="sample")
    with pytest.raises(ConfigError):
        make_client(key_alg="A128KW")
    with make_client() as client, pytest.raises(FormatError):
        client.get_resource("../etc/passwd")


@pytest.mark.parametrize("key_alg", ["ECDH-ES+A256KW-P384", "ECDH-ES+A256KW-P521", "RSA-OAEP-256"])
def test_key_algs(fake: FakeKbs, make_client: Callable[..., KbsClient], key_alg: str) -> None:
    with make_client(key_alg=key_alg) as client:
        assert client.get_resource("models/m/1").reveal() == DEK
    assert fake.tee_pubkey is not None
    assert fake.tee_pubkey["alg"] == (
        "RSA-OAEP-256" if key_alg == "RSA-OAEP-256" else "ECDH-ES+A256KW"
    )


def test_closed_client_drops_key(make_client: Callable[..., KbsClient]) -> None:
    client = make_client()
    client.get_resource("models/m/1")
    client.close()
    with pytest.raises(Exception):
        client.get_resource("models/m/1")
