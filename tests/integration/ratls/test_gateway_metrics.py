"""The gateway's Prometheus series, scraped over HTTP from a real gateway on 127.0.0.1.

Each test takes a scrape, drives the gateway (a real attested client, raw TLS, plain TCP,
a raw upstream) and checks the exact change of every series it should have moved, and
that the other connection outcomes stayed put. Counters are per process, so only deltas
are compared; a connection's outcome is counted when its thread ends, so a test waits for
it (bounded) before comparing.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from OpenSSL import SSL
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from modelseal._internal.metrics import GATEWAY_CONNECTION_RESULTS, MetricsEndpoint
from modelseal.errors import BackendError
from modelseal.ratls.gateway import Gateway
from modelseal.ratls.tls import TlsStream, client_context
from modelseal.ratls.transport import AttestedTransport
from modelseal.ratls.wire import FRESH_PATH
from tests.ratls_helpers import (
    RawUpstream,
    Upstream,
    mock_identity,
    policy_for,
    running_gateway,
    tls_connect,
    tls_exchange,
    upstream_server,
)

pytestmark = pytest.mark.e2e

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
CONNECTIONS = "modelseal_gateway_connections_total"
REQUESTS = "modelseal_http_request_duration_seconds_count"


def scrape(gw: Gateway) -> Samples:
    assert gw.metrics_url is not None
    answer = httpx.get(gw.metrics_url, timeout=10)
    assert answer.status_code == 200
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(answer.text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def route(route: str, method: str, status_class: str) -> dict[str, str]:
    """The labels of a gateway request series."""
    return {"server": "gateway", "route": route, "method": method, "status_class": status_class}


def grew(before: Samples, after: Samples, name: str, **labels: str) -> float:
    """How much one series changed between two scrapes."""
    return value(after, name, **labels) - value(before, name, **labels)


def outcomes(samples: Samples) -> dict[str, float]:
    return {r: value(samples, CONNECTIONS, result=r) for r in GATEWAY_CONNECTION_RESULTS}


def changed(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before[k] for k in after if after[k] != before[k]}


def settle(gw: Gateway, done: Callable[[Samples], bool]) -> Samples:
    """Scrape until ``done`` holds (a connection thread may still be closing): at most
    10 s, then the last scrape is returned for the assertion to fail on."""
    deadline = time.monotonic() + 10
    while True:
        samples = scrape(gw)
        if done(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.02)


def settled_outcomes(gw: Gateway, before: Samples, expected: dict[str, float]) -> Samples:
    """Wait for the connection outcomes to have changed by ``expected``, then check that
    they changed by exactly that (nothing else, nothing more)."""
    samples = settle(gw, lambda s: changed(outcomes(before), outcomes(s)) == expected)
    assert changed(outcomes(before), outcomes(samples)) == expected
    assert value(samples, "modelseal_gateway_open_connections") == 0
    return samples


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    with upstream_server() as up:
        yield up


@contextmanager
def metered(tmp_path: Path, upstream_url: str, **settings: Any) -> Iterator[dict[str, Any]]:
    identity, attester = mock_identity(tmp_path / "ca")
    with running_gateway(identity, upstream_url, metrics=MetricsEndpoint(), **settings) as gw:
        options = {"mock_tdx_root": str(attester.ca.root_pem_path)}
        yield {
            "gw": gw,
            "identity": identity,
            "url": f"https://127.0.0.1:{gw.port}",
            "client": lambda fresh=True: httpx.Client(
                transport=AttestedTransport(policy_for(attester), tee_options=options, fresh=fresh),
                timeout=30,
            ),
        }


@pytest.fixture(scope="class")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One gateway for the tests of :class:`TestOneGateway`, which leave it as they found
    it (deltas only); gone before the next test starts its own (a process serves one
    gateway's metrics at a time)."""
    with upstream_server() as up, metered(tmp_path_factory.mktemp("gw"), up.url) as s:
        yield {**s, "upstream": up}


@pytest.fixture
def setup(shared: dict[str, Any]) -> dict[str, Any]:
    shared["upstream"].received.clear()
    return shared


class TestOneGateway:
    """Outcomes and requests on one shared gateway."""

    def test_served_requests_count_by_route_method_and_status_class(
        self, setup: dict[str, Any]
    ) -> None:
        gw = setup["gw"]
        before = scrape(gw)
        with setup["client"](fresh=False) as client:
            answers = [
                client.post(setup["url"] + "/v1/classify", content=b"a"),
                client.post(setup["url"] + "/v1/classify", content=b"bc"),
                client.get(setup["url"] + "/models"),
            ]
        assert [a.status_code for a in answers] == [200, 200, 200]
        after = settled_outcomes(gw, before, {"served": 1})
        relayed = "modelseal_gateway_relayed_bytes_total"
        assert grew(before, after, relayed, direction="request") == 3
        answered = sum(len(a.content) for a in answers)
        assert answered > 0
        assert grew(before, after, relayed, direction="response") == answered
        assert grew(before, after, REQUESTS, **route("upstream", "POST", "2xx")) == 2
        assert grew(before, after, REQUESTS, **route("upstream", "GET", "2xx")) == 1
        # no fresh evidence was asked for (fresh=False)
        assert grew(before, after, REQUESTS, **route(FRESH_PATH, "GET", "2xx")) == 0
        assert len(setup["upstream"].received) == 3

    def test_unusual_methods_and_refused_targets_keep_labels_bounded(
        self, setup: dict[str, Any]
    ) -> None:
        gw = setup["gw"]
        before = scrape(gw)
        # a method the upstream does not know: forwarded, answered 501, labelled OTHER
        brew = tls_exchange(gw.port, b"BREW /pot HTTP/1.1\r\nhost: g\r\nconnection: close\r\n\r\n")
        assert brew.split(b" ", 2)[1] == b"501"
        # refused by the gateway itself before routing: an absolute-form target and CONNECT
        absolute = tls_exchange(gw.port, b"GET http://127.0.0.1:1/x HTTP/1.1\r\nhost: g\r\n\r\n")
        assert absolute.split(b" ", 2)[1] == b"400"
        connect = tls_exchange(gw.port, b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nhost: g\r\n\r\n")
        assert connect.split(b" ", 2)[1] == b"400"
        after = settled_outcomes(gw, before, {"served": 3})
        delta = {
            key: after[key] - before.get(key, 0.0)
            for key in after
            if key[0] == REQUESTS and after[key] != before.get(key, 0.0)
        }
        labels = [dict(k[1]) for k in delta]
        assert sorted((d["route"], d["method"], d["status_class"]) for d in labels) == [
            ("rejected", "GET", "4xx"),
            ("rejected", "OTHER", "4xx"),
            ("upstream", "OTHER", "5xx"),
        ]
        assert set(delta.values()) == {1.0}
        assert not [d for d in labels if d["server"] != "gateway"]

    def test_fresh_evidence_is_counted(self, setup: dict[str, Any]) -> None:
        gw = setup["gw"]
        before = scrape(gw)
        with setup["client"](fresh=True) as client:
            assert client.get(setup["url"] + "/x").status_code == 200
        # refused without asking the TEE: a nonce that is too short, and a POST
        target = FRESH_PATH.encode()
        short = tls_exchange(gw.port, b"GET " + target + b"?nonce=AAAA HTTP/1.1\r\nhost: g\r\n\r\n")
        assert short.split(b" ", 2)[1] == b"400"
        post = b"POST " + target + b"?nonce=" + b"A" * 43 + b" HTTP/1.1\r\nhost: g\r\n"
        posted = tls_exchange(gw.port, post + b"content-length: 2\r\n\r\nhi")
        assert posted.split(b" ", 2)[1] == b"405"
        after = settled_outcomes(gw, before, {"served": 3})
        fresh = "modelseal_gateway_fresh_evidence_total"
        assert grew(before, after, fresh, result="ok") == 1
        assert grew(before, after, fresh, result="rejected") == 2
        assert grew(before, after, fresh, result="error") == 0
        assert grew(before, after, REQUESTS, **route(FRESH_PATH, "GET", "2xx")) == 1
        assert grew(before, after, REQUESTS, **route(FRESH_PATH, "GET", "4xx")) == 1
        assert grew(before, after, REQUESTS, **route(FRESH_PATH, "POST", "4xx")) == 1
        assert grew(before, after, REQUESTS, **route("upstream", "GET", "2xx")) == 1

    def test_evidence_the_tee_cannot_make_is_an_error(self, setup: dict[str, Any]) -> None:
        gw = setup["gw"]
        identity = setup["identity"]
        before = scrape(gw)

        def broken(report_data: bytes) -> bytes:
            raise BackendError("the TEE answered nothing")

        real, identity.attester.evidence = identity.attester.evidence, broken
        nonce = b"A" * 43
        request = (
            b"GET " + FRESH_PATH.encode() + b"?nonce=" + nonce + b" HTTP/1.1\r\nhost: g\r\n\r\n"
        )
        try:
            assert tls_exchange(gw.port, request) == b""  # the connection ends without an answer
        finally:
            identity.attester.evidence = real
        after = settled_outcomes(gw, before, {"error": 1})
        fresh = "modelseal_gateway_fresh_evidence_total"
        assert grew(before, after, fresh, result="error") == 1
        assert grew(before, after, fresh, result="ok") == 0
        # an unanswered request is no request in the duration histogram
        assert grew(before, after, REQUESTS, **route(FRESH_PATH, "GET", "2xx")) == 0

    def test_plain_tcp_garbage_is_a_failed_handshake(self, setup: dict[str, Any]) -> None:
        gw = setup["gw"]
        before = scrape(gw)
        with socket.create_connection(("127.0.0.1", gw.port), 10) as plain:
            plain.settimeout(10)
            plain.sendall(b"GET / HTTP/1.1\r\nhost: g\r\n\r\n")
            with contextlib.suppress(ConnectionResetError):
                while plain.recv(4096):  # a TLS alert at most, then the gateway closes
                    pass
        settled_outcomes(gw, before, {"handshake_failed": 1})

    def test_malformed_head_and_broken_tls_are_told_apart(self, setup: dict[str, Any]) -> None:
        gw = setup["gw"]
        before = scrape(gw)
        answer = tls_exchange(gw.port, b"GET / HTTP/1.1\r\nhost: g\r\nbad header line\r\n\r\n")
        assert answer.split(b" ", 2)[1] == b"400"
        # TLS set up, then bytes that are no TLS record: the session breaks mid-exchange
        stream = tls_connect(gw.port)
        try:
            stream.sock.sendall(b"\x00" * 64)
            with contextlib.suppress(SSL.Error, OSError):  # an alert, a reset or a close
                while stream.read():
                    pass
        finally:
            stream.close()
        after = settled_outcomes(gw, before, {"malformed": 1, "aborted": 1})
        # the malformed head is counted as a connection outcome, never as a request
        new = [k for k in after if k[0] == REQUESTS and after[k] != before.get(k, 0.0)]
        assert new == []


def test_a_connection_over_the_limit_is_refused_and_counted(
    tmp_path: Path, upstream: Upstream
) -> None:
    with metered(tmp_path, upstream.url, max_connections=1) as s:
        gw = s["gw"]
        before = scrape(gw)
        held = tls_connect(gw.port)  # the handshake done: it holds the only slot
        try:
            samples = scrape(gw)
            assert value(samples, "modelseal_gateway_open_connections") == 1
            assert value(samples, "modelseal_gateway_connection_limit") == 1
            with socket.create_connection(("127.0.0.1", gw.port), 10) as refused:
                refused.settimeout(10)
                assert refused.recv(1) == b""  # closed unread
            settle(gw, lambda s: value(s, CONNECTIONS, result="refused_limit") > 0)
        finally:
            held.close()
        settled_outcomes(gw, before, {"refused_limit": 1, "served": 1})


def test_silence_times_out_but_an_idle_keep_alive_ends_served(
    tmp_path: Path, upstream: Upstream
) -> None:
    with metered(tmp_path, upstream.url, idle_timeout=0.5) as s:
        gw = s["gw"]
        before = scrape(gw)
        silent = tls_connect(gw.port)  # never sends a request
        kept = tls_connect(gw.port)  # one request, then kept alive and idle
        try:
            kept.write(b"GET /one HTTP/1.1\r\nhost: g\r\n\r\n")
            answer = b""
            while chunk := kept.read():  # the gateway closes both when idle too long
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 200")
            assert silent.read() == b""
        finally:
            silent.close()
            kept.close()
        settled_outcomes(gw, before, {"timed_out": 1, "served": 1})


def test_an_upstream_breaking_off_mid_body_is_cut_off(tmp_path: Path) -> None:
    def script(head: bytes) -> list[bytes | None]:
        return [b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n", b"x" * 50, None]

    with RawUpstream(script) as raw, metered(tmp_path, raw.url) as s:
        gw = s["gw"]
        before = scrape(gw)
        with (
            s["client"]() as client,
            pytest.raises(httpx.HTTPError),
            client.stream("GET", s["url"] + "/short") as response,
        ):
            b"".join(response.iter_raw())
        after = settled_outcomes(gw, before, {"cut_off": 1})
        # the head was sent, the body never ended: not an answered request
        assert grew(before, after, REQUESTS, **route("upstream", "GET", "2xx")) == 0
        # but the 50 bytes that did pass are counted
        relayed = "modelseal_gateway_relayed_bytes_total"
        assert grew(before, after, relayed, direction="response") == 50


def _renewals(result: str) -> float:
    """This process's renewal counter, read without a gateway to scrape."""
    sample = REGISTRY.get_sample_value(
        "modelseal_gateway_certificate_renewals_total", {"result": result}
    )
    return sample or 0.0


def test_certificate_renewals_and_their_times(tmp_path: Path, upstream: Upstream) -> None:
    now = [time.time()]
    identity, attester = mock_identity(tmp_path / "ca", clock=lambda: now[0], lifetime=600)
    renewals = "modelseal_gateway_certificate_renewals_total"
    expiry = "modelseal_gateway_certificate_expiry_timestamp_seconds"
    due = "modelseal_gateway_certificate_renewal_timestamp_seconds"
    first = identity.issued
    ok_before, failed_before = _renewals("ok"), _renewals("failed")
    now[0] += 300  # half-life: the refresher renews when it first wakes (after 1 s)
    with running_gateway(identity, upstream.url, metrics=MetricsEndpoint()) as gw:
        renewed = settle(gw, lambda s: value(s, renewals, result="ok") > ok_before)
        assert value(renewed, renewals, result="ok") - ok_before == 1
        assert value(renewed, renewals, result="failed") == failed_before
        assert identity.issued is not first
        assert value(renewed, expiry) == first.expires + 300
        assert value(renewed, due) == first.issued_at + 600

        # the TEE stops answering: a renewal fails, the old certificate stays served
        served = identity.issued
        real = attester.evidence

        def broken(report_data: bytes) -> bytes:
            raise BackendError("the TEE answered nothing")

        attester.evidence = broken  # type: ignore[method-assign]
        with pytest.raises(BackendError):
            identity.refresh()
        failed = scrape(gw)
        assert value(failed, renewals, result="failed") - failed_before == 1
        assert value(failed, renewals, result="ok") - ok_before == 1
        assert identity.issued is served
        assert value(failed, expiry) == served.expires

        # a client arriving after half-life renews on accept; while that fails, the
        # connection ends as an error (no certificate to offer)
        now[0] += 300
        with (
            pytest.raises((SSL.Error, OSError)),
            socket.create_connection(("127.0.0.1", gw.port), 10) as sock,
        ):
            TlsStream.client(client_context(), sock, 10, None).handshake()
        errored = settled_outcomes(gw, failed, {"error": 1})
        assert value(errored, renewals, result="failed") - failed_before == 2
        attester.evidence = real  # type: ignore[method-assign]
        tls_connect(gw.port).close()
        later = settle(gw, lambda s: value(s, renewals, result="ok") - ok_before == 2)
        assert value(later, renewals, result="ok") - ok_before == 2
        assert value(later, renewals, result="failed") - failed_before == 2
        assert value(later, expiry) == identity.issued.expires == int(now[0]) + 600
