"""The owner's registry and KBS admin clients against hostile servers on 127.0.0.1.

Publishing talks to a registry and a KBS that may be compromised or impersonated: their
answers are capped, deadline-bound and parsed without recursion tracebacks, exactly like
the loader's (one shared reader, ``modelseal._internal.bounded_http``).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from modelseal.errors import BackendError, FormatError, ModelNotFound, TransientError
from modelseal.owner.kbs_admin import KbsAdminClient
from modelseal.owner.registry_client import MAX_BODY_BYTES, RegistryClient
from tests.hostile_http import HostileServer, answer, endless

DEEP = b"[" * 100_000 + b"]" * 100_000


@pytest.fixture
def server() -> Iterator[HostileServer]:
    with HostileServer().running() as running:
        yield running


def registry(server: HostileServer, timeout: float = 30.0) -> RegistryClient:
    return RegistryClient(server.url, "tok", timeout=timeout, attempts=1)


def admin(server: HostileServer, timeout: float = 30.0) -> KbsAdminClient:
    return KbsAdminClient(server.url, "tok", timeout=timeout)


def test_registry_endless_model_list_stops_at_the_cap(server: HostileServer) -> None:
    server.routes["GET /models"] = endless(800 << 20, sent=server.sent)
    with registry(server) as client, pytest.raises(FormatError, match=f"{MAX_BODY_BYTES}-byte cap"):
        client.list_models()
    assert server.sent["/models"] < 800 << 20


def test_registry_trickle_hits_the_deadline(server: HostileServer) -> None:
    server.routes["GET /models/m"] = endless(1 << 20, chunk=1, delay=0.02)
    with (
        registry(server, timeout=0.3) as client,
        pytest.raises(TransientError, match=r"registry get: no complete answer within 0\.3 s"),
    ):
        client.get_model("m")


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (200, DEEP, BackendError),  # a model info nested too deeply: unexpected body
        (500, b'{"detail": ' + DEEP + b"}", TransientError),
        (404, DEEP, ModelNotFound),
    ],
)
def test_registry_deep_bodies(
    server: HostileServer, status: int, body: bytes, error: type[Exception]
) -> None:
    server.routes["GET /models/m"] = answer(status, body)
    with registry(server) as client, pytest.raises(error):
        client.get_model("m")


def test_registry_endless_error_body_is_cut(server: HostileServer) -> None:
    server.routes["GET /models/m"] = endless(800 << 20, status=503, sent=server.sent)
    with registry(server) as client, pytest.raises(TransientError, match="registry answered 503"):
        client.get_model("m")


def test_admin_endless_answer_stops_at_the_cap(server: HostileServer) -> None:
    server.routes["GET /modelseal/v1/keys"] = endless(800 << 20, sent=server.sent)
    with admin(server) as client, pytest.raises(FormatError, match="byte cap"):
        client.list_keys()


def test_admin_trickle_hits_the_deadline(server: HostileServer) -> None:
    server.routes["GET /modelseal/v1/whoami"] = endless(1 << 20, chunk=1, delay=0.02)
    with admin(server, timeout=0.3) as client, pytest.raises(TransientError, match="within 0"):
        client.whoami()


@pytest.mark.parametrize(
    ("route", "status", "body", "error"),
    [
        ("GET /modelseal/v1/whoami", 200, DEEP, BackendError),
        ("GET /modelseal/v1/keys", 200, b'{"keys": ' + DEEP + b"}", BackendError),
        ("GET /modelseal/v1/keys", 500, b'{"detail": ' + DEEP + b"}", BackendError),
    ],
)
def test_admin_deep_bodies(
    server: HostileServer, route: str, status: int, body: bytes, error: type[Exception]
) -> None:
    server.routes[route] = answer(status, body)
    with admin(server) as client:
        call = client.whoami if route.endswith("whoami") else client.list_keys
        with pytest.raises(error):
            call()
