"""The loader's client of guest-components' REST API treats the server as hostile.

Every answer of a scripted server on 127.0.0.1 maps to one documented error: a denial the
CDH does not explain is exit 4, a daemon still starting or an unreachable server exit 75,
a server without the feature exit 2; bodies are capped and deadlines hold.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from modelseal.errors import (
    AttestationError,
    ConfigError,
    FormatError,
    PolicyDenied,
    TransientError,
    UnsupportedTee,
)
from modelseal.tee import registry
from modelseal.tee.aa.attester import Attester as AaAttester
from modelseal.tee.aa.rest import MAX_RESOURCE_BYTES, ApiServerClient
from tests.conftest import free_port
from tests.hostile_http import HostileServer, answer, endless

KEY = b"k" * 32
UUID = "88B3A4B3-BA4B-4E2B-B00E-BC32CA3D56BE"


@pytest.fixture
def server() -> Iterator[HostileServer]:
    with HostileServer().running() as running:
        yield running


def _client(server: HostileServer, timeout: float = 5.0) -> ApiServerClient:
    return ApiServerClient(server.url, timeout=timeout)


@pytest.mark.parametrize(
    ("key_id", "path"),
    [
        ("models/m/v1", "/cdh/resource/models/m/v1"),
        ("kbs:///models/m/v1", "/cdh/resource/models/m/v1"),
        (UUID, "/cdh/resource/default/key/" + UUID.lower()),
    ],
)
def test_every_key_id_spelling_reaches_the_resource_path(
    server: HostileServer, key_id: str, path: str
) -> None:
    server.routes[f"GET {path}"] = answer(200, KEY, {"Content-Type": "application/octet-stream"})
    with _client(server) as client:
        assert client.resource(key_id).reveal() == KEY
    assert server.hits == [f"GET {path}"]


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        # the CDH tried and failed: denied, unknown key or its KBS down (it does not say)
        (500, b"ttrpc request error", PolicyDenied),
        # the CDH daemon is not up yet: try again
        (500, b"ttrpc connect to CDH addr: unix:///run/cdh.sock failed", TransientError),
        (404, b"Resource Feature Not Enabled", ConfigError),
        (404, b"URL NOT FOUND", ConfigError),
        (403, b"Forbidden", ConfigError),
        (502, b"bad gateway", TransientError),
    ],
)
def test_resource_failures_map_to_exit_codes(
    server: HostileServer, status: int, body: bytes, error: type[Exception]
) -> None:
    server.routes["GET"] = answer(status, body)
    with _client(server) as client, pytest.raises(error) as caught:
        client.resource("models/m/v1")
    # the peer's text reaches the message only as one printable line
    assert "\n" not in str(caught.value)


def test_an_empty_resource_is_refused(server: HostileServer) -> None:
    server.routes["GET"] = answer(200, b"")
    with _client(server) as client, pytest.raises(FormatError):
        client.resource("models/m/v1")


def test_an_endless_resource_is_cut_at_the_cap(server: HostileServer) -> None:
    server.routes["GET"] = endless(MAX_RESOURCE_BYTES * 4, chunk=64 << 10)
    with _client(server) as client, pytest.raises(FormatError, match="cap"):
        client.resource("models/m/v1")


def test_a_trickling_resource_hits_the_deadline(server: HostileServer) -> None:
    server.routes["GET"] = endless(1 << 20, chunk=1, delay=0.2)
    with _client(server, timeout=1.0) as client, pytest.raises(TransientError):
        client.resource("models/m/v1")


def test_an_unreachable_server_is_transient() -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    with (
        ApiServerClient(closed, timeout=2.0) as client,
        pytest.raises(TransientError, match="unreachable"),
    ):
        client.resource("models/m/v1")


def test_a_key_id_naming_another_kbs_is_refused(server: HostileServer) -> None:
    with _client(server) as client, pytest.raises(FormatError, match="empty authority"):
        client.resource("kbs://evil.example/models/m/v1")
    assert server.hits == []


def test_evidence_failure_is_an_attestation_error(server: HostileServer) -> None:
    server.routes["GET /aa/evidence"] = answer(500, b"ttrpc request error")
    with _client(server) as client, pytest.raises(AttestationError):
        client.evidence(bytes(48))


def test_evidence_must_be_json(server: HostileServer) -> None:
    server.routes["GET /aa/evidence"] = answer(200, b"\x00quote")
    with _client(server) as client, pytest.raises(FormatError):
        client.evidence(bytes(48))


@pytest.mark.parametrize(
    ("body", "recorded", "message"),
    [
        (b'{"success":"true"}', True, ""),
        (
            b'{"success":"false","message": "Attestation Agent does not enable eventlog '
            b'recording"}',
            False,
            "Attestation Agent does not enable eventlog recording",
        ),
    ],
)
def test_runtime_measurement_answers(
    server: HostileServer, body: bytes, recorded: bool, message: str
) -> None:
    server.routes["POST /aa/aael"] = answer(200, body, {"Content-Type": "application/json"})
    with _client(server) as client:
        result = client.extend_runtime_measurement("modelseal.dev", "LoadModel", "c")
    assert (result.recorded, result.message) == (recorded, message)


@pytest.mark.parametrize("body", [b'{"success": true}', b"[]", b'{"result": "ok"}'])
def test_runtime_measurement_answers_of_another_shape(server: HostileServer, body: bytes) -> None:
    server.routes["POST /aa/aael"] = answer(200, body)
    with _client(server) as client, pytest.raises(FormatError):
        client.extend_runtime_measurement("d", "o", "c")


def _info(server: HostileServer, doc: object) -> None:
    server.routes["GET /info"] = answer(200, json.dumps(doc).encode())


def test_the_aa_attester_relays_the_agents_tee_kind(server: HostileServer) -> None:
    _info(server, {"version": "v0.14.0", "tee": "tdx", "feature": "all"})
    attester = AaAttester(server.url)
    try:
        assert registry.evidence_kind("aa", attester) == "tdx"
    finally:
        attester.close()


def test_trustee_spellings_of_azure_kinds_are_mapped(server: HostileServer) -> None:
    _info(server, {"version": "v0.14.0", "tee": "azsnpvtpm", "feature": "all"})
    attester = AaAttester(server.url)
    assert attester.evidence_kind == "az-snp-vtpm"
    attester.close()


def test_an_agent_tee_this_build_cannot_verify_is_refused(server: HostileServer) -> None:
    _info(server, {"version": "v0.14.0", "tee": "cca", "feature": "all"})
    attester = AaAttester(server.url)
    try:
        with pytest.raises(UnsupportedTee, match="cca"):
            registry.evidence_kind("aa", attester)
    finally:
        attester.close()


def test_a_server_without_the_attestation_feature_reports_no_tee(server: HostileServer) -> None:
    _info(server, {"version": "v0.14.0", "feature": "resource"})
    with pytest.raises(ConfigError, match="--features attestation or all"):
        AaAttester(server.url)
