"""The attested gateway and ``AttestedTransport`` end to end on 127.0.0.1 (mock-tdx).

A real recording upstream, the real gateway (in-memory key, evidence in the certificate,
fresh evidence on request), the real client transport. Every refusal also asserts that
the upstream never saw the request.
"""

from __future__ import annotations

import logging
import os
import pickle
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from OpenSSL import SSL

from modelseal.crypto.tls_identity import TlsKey, certificate_extension
from modelseal.errors import EvidenceError, PolicyDenied, UnsupportedTee
from modelseal.ratls.tls import TlsStream
from modelseal.ratls.transport import AttestedTransport
from modelseal.ratls.verify import PeerPolicy
from modelseal.ratls.wire import OID_TAGGED_EVIDENCE
from tests.ratls_helpers import (
    MODEL,
    Relay,
    Upstream,
    last_byte_changed,
    mock_identity,
    policy_for,
    relay_certificate,
    running_gateway,
    tls_connect,
    tls_exchange,
    upstream_server,
)

pytestmark = pytest.mark.e2e


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    with upstream_server() as up:
        yield up


@pytest.fixture
def setup(tmp_path: Path, upstream: Upstream) -> Iterator[dict[str, Any]]:
    identity, attester = mock_identity(tmp_path / "ca")
    with running_gateway(identity, upstream.url) as gw:
        yield {
            "identity": identity,
            "attester": attester,
            "url": f"https://127.0.0.1:{gw.port}",
            "options": {"mock_tdx_root": str(attester.ca.root_pem_path)},
            "port": gw.port,
        }


def _client(s: dict[str, Any], policy: Any = None, **kwargs: Any) -> httpx.Client:
    transport = AttestedTransport(
        policy or policy_for(s["attester"]), tee_options=s["options"], **kwargs
    )
    return httpx.Client(transport=transport, timeout=30)


@pytest.mark.parametrize("fresh", [True, False])
def test_right_policy_gets_the_answer(
    setup: dict[str, Any], upstream: Upstream, fresh: bool
) -> None:
    with _client(setup, fresh=fresh) as client:
        first = client.post(setup["url"] + "/v1/classify", content=b"prompt one")
        second = client.post(setup["url"] + "/v1/classify", content=b"prompt two")
    assert first.status_code == 200
    assert first.json()["echo"] == "prompt one"
    assert second.json()["echo"] == "prompt two"
    assert [r[2] for r in upstream.received] == [b"prompt one", b"prompt two"]
    attested = first.extensions["network_stream"].get_extra_info("modelseal_attested")
    assert attested.fresh is fresh
    assert attested.claims.tee == "mock-tdx"
    assert attested.statement.models == (MODEL,)


def test_wrong_measurement_is_refused_before_the_body_is_sent(
    setup: dict[str, Any], upstream: Upstream
) -> None:
    wrong = last_byte_changed(setup["attester"].measurements["mr_td"])
    policy = policy_for(setup["attester"], measurements=[{"mr_td": wrong}])
    with _client(setup, policy) as client, pytest.raises(PolicyDenied, match="mr_td"):
        client.post(setup["url"] + "/v1/classify", content=b"secret prompt")
    assert upstream.received == []


def test_wrong_model_digest_is_refused_before_the_body_is_sent(
    setup: dict[str, Any], upstream: Upstream
) -> None:
    policy = policy_for(setup["attester"], model_digest=last_byte_changed(MODEL))
    with (
        _client(setup, policy) as client,
        pytest.raises(PolicyDenied, match="not among the attested models"),
    ):
        client.post(setup["url"] + "/v1/classify", content=b"secret prompt")
    assert upstream.received == []


def test_policy_for_another_kind_is_refused(setup: dict[str, Any], upstream: Upstream) -> None:
    policy = policy_for(setup["attester"], tee=["snp"], measurements=None)
    with _client(setup, policy) as client, pytest.raises(EvidenceError, match="allows only snp"):
        client.get(setup["url"] + "/")
    assert upstream.received == []


def test_mock_root_must_be_configured(setup: dict[str, Any], upstream: Upstream) -> None:
    transport = AttestedTransport(policy_for(setup["attester"]))
    with httpx.Client(transport=transport) as client, pytest.raises(UnsupportedTee):
        client.get(setup["url"] + "/")
    assert upstream.received == []


@pytest.mark.parametrize("copy_evidence", [False, True])
def test_tls_terminating_relay_is_refused(
    setup: dict[str, Any], upstream: Upstream, copy_evidence: bool
) -> None:
    genuine = setup["identity"].current.certificate
    copied = certificate_extension(genuine, OID_TAGGED_EVIDENCE) if copy_evidence else None
    key = TlsKey()
    message = "another TLS key" if copy_evidence else "no attestation evidence"
    with (
        Relay(setup["port"], relay_certificate(key, copied), key) as relay,
        _client(setup) as client,
        pytest.raises(EvidenceError, match=message),
    ):
        client.post(f"https://127.0.0.1:{relay.port}/v1/classify", content=b"prompt")
    assert upstream.received == []


def _tls(port: int) -> TlsStream:
    return tls_connect(port)


def test_fresh_evidence_replayed_on_another_connection_is_refused(
    setup: dict[str, Any],
) -> None:
    from modelseal.ratls.transport import _get_fresh

    peer = PeerPolicy(policy_for(setup["attester"]), tee_options=setup["options"])
    first, second = _tls(setup["port"]), _tls(setup["port"])
    try:
        nonce = os.urandom(32)
        evidence = _get_fresh(first, nonce, "gateway")
        cert = first.peer_certificate_der()
        assert cert is not None
        accepted = peer.check_fresh(
            evidence, certificate_der=cert, nonce=nonce, exporter=first.channel_binding()
        )
        assert accepted.fresh
        with pytest.raises(EvidenceError, match="another TLS connection"):
            peer.check_fresh(
                evidence, certificate_der=cert, nonce=nonce, exporter=second.channel_binding()
            )
        with pytest.raises(EvidenceError, match="nonce"):
            peer.check_fresh(
                evidence,
                certificate_der=cert,
                nonce=nonce[:-1] + bytes([nonce[-1] ^ 1]),
                exporter=first.channel_binding(),
            )
    finally:
        first.close()
        second.close()


def test_expired_evidence_is_refused(tmp_path: Path, upstream: Upstream) -> None:
    # a gateway whose clock is two hours behind serves evidence that expired an hour ago
    identity, attester = mock_identity(tmp_path / "ca", clock=lambda: time.time() - 7200)
    options = {"mock_tdx_root": str(attester.ca.root_pem_path)}
    with running_gateway(identity, upstream.url) as gw:
        transport = AttestedTransport(policy_for(attester), tee_options=options)
        with (
            httpx.Client(transport=transport) as client,
            pytest.raises(EvidenceError, match="expired"),
        ):
            client.post(f"https://127.0.0.1:{gw.port}/", content=b"prompt")
    assert upstream.received == []


def test_cached_certificate_evidence_expires_too(setup: dict[str, Any]) -> None:
    now = [time.time()]
    peer = PeerPolicy(
        policy_for(setup["attester"]), tee_options=setup["options"], clock=lambda: now[0]
    )
    cert = setup["identity"].current.certificate
    peer.check_certificate(cert)
    now[0] += setup["identity"].lifetime
    with pytest.raises(EvidenceError, match="expired"):
        peer.check_certificate(cert)


def test_gateway_renews_evidence_at_half_life(tmp_path: Path) -> None:
    now = [time.time()]
    identity, _ = mock_identity(tmp_path / "ca", clock=lambda: now[0], lifetime=600)
    first = identity.current
    now[0] += 299
    assert identity.current is first
    now[0] += 1
    renewed = identity.current
    assert renewed is not first
    assert renewed.expires == first.expires + 300
    assert renewed.certificate != first.certificate


def test_server_sent_events_stream_without_buffering(
    setup: dict[str, Any], upstream: Upstream
) -> None:
    with _client(setup) as client, client.stream("GET", setup["url"] + "/sse") as response:
        assert response.headers["content-type"] == "text/event-stream"
        lines = response.iter_lines()
        # the upstream holds back event 1 until the client has seen event 0
        assert next(lines) == "data: event 0"
        upstream.proceed.set()
        rest = [line for line in lines if line]
    assert rest == ["data: event 1", "data: event 2"]
    assert not upstream.sse_gave_up


def test_chunked_upload_and_large_download_stream(
    setup: dict[str, Any], upstream: Upstream
) -> None:
    parts = [os.urandom(100_000) for _ in range(5)]
    with _client(setup) as client:
        response = client.post(setup["url"] + "/upload", content=iter(parts))
        assert response.json()["bytes"] == 500_000
        size = 5 * (1 << 20) + 7
        with client.stream("GET", f"{setup['url']}/big/{size}") as big:
            got = sum(len(chunk) for chunk in big.iter_raw())
    assert upstream.received[0][2] == b"".join(parts)
    assert got == size


def test_upstream_down_is_a_502(tmp_path: Path) -> None:
    identity, attester = mock_identity(tmp_path / "ca")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    with running_gateway(identity, f"http://127.0.0.1:{dead}") as gw:
        transport = AttestedTransport(
            policy_for(attester), tee_options={"mock_tdx_root": str(attester.ca.root_pem_path)}
        )
        with httpx.Client(transport=transport) as client:
            assert client.get(f"https://127.0.0.1:{gw.port}/").status_code == 502


def test_key_never_reaches_logs_files_or_pickles(
    setup: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    identity = setup["identity"]
    with caplog.at_level(logging.DEBUG), _client(setup) as client:
        client.post(setup["url"] + "/v1/classify", content=b"prompt")
        identity.refresh()
    secret = identity.key._key.private_numbers().private_value.to_bytes(32, "big")
    assert caplog.records
    text = caplog.text
    for form in (secret.hex(), secret.hex().upper(), "PRIVATE KEY"):
        assert form not in text
    assert "in memory" in repr(identity.key)
    with pytest.raises(TypeError):
        pickle.dumps(identity.key)
    # no descriptor of this process is a memfd or a file holding key material
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        assert not target.startswith("/memfd:"), target
        if target.startswith("/") and os.path.isfile(target):
            with open(target, "rb") as f:
                assert secret not in f.read(16 << 20), target


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /.well-known/modelseal-attestation HTTP/1.1\r\nhost: g\r\n\r\n", b"400"),
        (b"GET /.well-known/modelseal-attestation?nonce=AAAA HTTP/1.1\r\nhost: g\r\n\r\n", b"400"),
        (
            b"GET /.well-known/modelseal-attestation?nonce=!!!!!!!!!!!!!!!!!!!!!!!! HTTP/1.1\r\n"
            b"host: g\r\n\r\n",
            b"400",
        ),
        (
            b"POST /.well-known/modelseal-attestation?nonce=" + b"A" * 43 + b" HTTP/1.1\r\n"
            b"host: g\r\ncontent-length: 5\r\n\r\nhello",
            b"405",
        ),
        (b"GET / HTTP/1.1\r\nhost: g\r\nbad header line\r\n\r\n", b"400"),
        # absolute-form and authority-form targets would make the gateway an open proxy
        (b"GET http://127.0.0.1:1/x HTTP/1.1\r\nhost: g\r\n\r\n", b"400"),
        (b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nhost: g\r\n\r\n", b"400"),
        (b"GET /\xff HTTP/1.1\r\nhost: g\r\n\r\n", b"400"),
        (
            b"GET /.well-known/modelseal-attestation?"
            + b"&".join([b"a=1"] * 10)
            + b" HTTP/1.1\r\nhost: g\r\n\r\n",
            b"400",
        ),
        (b"GET / HTTP/1.1\r\n" + b"x-filler: " + b"a" * 70_000 + b"\r\n\r\n", b"400"),
    ],
)
def test_hostile_requests_get_a_status_not_a_crash(
    setup: dict[str, Any], upstream: Upstream, request_bytes: bytes, status: bytes
) -> None:
    answer = tls_exchange(setup["port"], request_bytes)
    assert answer.split(b" ", 2)[1] == status, answer[:200]
    assert upstream.received == []
    # the gateway still serves
    with _client(setup) as client:
        assert client.get(setup["url"] + "/after").status_code == 200


def test_a_client_trickling_its_request_head_is_cut_off(tmp_path: Path, upstream: Upstream) -> None:
    identity, _ = mock_identity(tmp_path / "ca")
    with running_gateway(identity, upstream.url, idle_timeout=1.0) as gw:
        stream = _tls(gw.port)
        try:
            stream.write(b"GET / HTTP/1.1\r\nhost: g\r\n")
            closed = False
            for _ in range(100):  # 30 s of one header line every 0.3 s, if never cut off
                time.sleep(0.3)
                try:
                    stream.write(b"x-slow: 1\r\n")
                except (OSError, SSL.Error):
                    closed = True
                    break
                if select.select([stream.sock], [], [], 0)[0] and stream.read() == b"":
                    closed = True
                    break
        finally:
            stream.close()
    assert closed
    assert upstream.received == []
