"""The gateway's relay of upstream bodies, against a raw upstream that splits its bytes at
odd places, lies about lengths or sends garbage (real gateway, real client, 127.0.0.1)."""

from __future__ import annotations

import itertools
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelseal.ratls.tls import TlsStream, client_context
from modelseal.ratls.transport import AttestedTransport
from modelseal.ratls.upstream import MAX_CHUNK_LINE
from tests.ratls_helpers import RawUpstream, mock_identity, policy_for, running_gateway

pytestmark = pytest.mark.e2e

Script = Callable[[bytes], list[bytes | None]]


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Callable[[Script], tuple[httpx.Client, str, RawUpstream]]]:
    """``gateway(script)``: a client and the gateway's URL in front of a raw upstream."""
    identity, attester = mock_identity(tmp_path / "ca")
    opened: list[Any] = []

    def start(script: Script) -> tuple[httpx.Client, str, RawUpstream]:
        upstream = RawUpstream(script).__enter__()
        running = running_gateway(identity, upstream.url)
        gw = running.__enter__()
        transport = AttestedTransport(
            policy_for(attester), tee_options={"mock_tdx_root": str(attester.ca.root_pem_path)}
        )
        client = httpx.Client(transport=transport, timeout=30)
        opened.extend([upstream, running, client])
        return client, f"https://127.0.0.1:{gw.port}", upstream

    yield start
    for item in reversed(opened):
        item.__exit__(None, None, None)


def _split(wire: bytes, *cuts: int) -> list[bytes | None]:
    bounds = [0, *cuts, len(wire)]
    return [wire[a:b] for a, b in itertools.pairwise(bounds)]


CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n"
CHUNKED_BODY = b"5\r\nhello\r\n6;ext=1\r\n world\r\n1a\r\n" + b"z" * 26 + b"\r\n0\r\nx-t: 1\r\n\r\n"


def test_chunked_body_split_at_odd_places_arrives_exact_and_reuses_the_upstream(
    gateway: Callable[[Script], tuple[httpx.Client, str, RawUpstream]],
) -> None:
    wire = CHUNKED_HEAD + CHUNKED_BODY
    cuts = (len(CHUNKED_HEAD) - 3, len(CHUNKED_HEAD) + 1, len(CHUNKED_HEAD) + 8, len(wire) - 4)
    client, url, upstream = gateway(lambda head: _split(wire, *cuts))
    streams = []
    with client:
        for _ in range(3):
            response = client.get(url + "/stream")
            assert response.status_code == 200
            assert response.content == b"hello world" + b"z" * 26
            assert "content-length" not in response.headers
            streams.append(response.extensions["network_stream"])
    # the client's connection stays open between bodiless requests, and each response
    # ended exactly where its framing said: one upstream connection for all
    assert all(stream is streams[0] for stream in streams)
    assert upstream.connections == 1
    assert all(b"\r\nhost: 127.0.0.1:" in head for head in upstream.heads)


def test_length_beside_chunked_framing_does_not_reach_the_client(
    gateway: Callable[[Script], tuple[httpx.Client, str, RawUpstream]],
) -> None:
    head = CHUNKED_HEAD.replace(b"\r\n\r\n", b"\r\ncontent-length: 3\r\n\r\n")
    client, url, upstream = gateway(lambda _head: [head + CHUNKED_BODY])
    with client:
        for _ in range(2):
            response = client.get(url + "/")
            assert response.content == b"hello world" + b"z" * 26
            assert "content-length" not in response.headers
    # a response framed both ways may be read differently by the upstream's own writer:
    # its connection is not reused
    assert upstream.connections == 2


def test_head_and_no_content_responses_have_no_body(
    gateway: Callable[[Script], tuple[httpx.Client, str, RawUpstream]],
) -> None:
    def script(head: bytes) -> list[bytes | None]:
        if head.startswith(b"HEAD"):
            return [b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n"]
        return [b"HTTP/1.1 204 No Content\r\n\r\n"]

    client, url, upstream = gateway(script)
    with client:
        head = client.head(url + "/")
        assert head.status_code == 200
        assert head.headers["content-length"] == "1000"
        assert client.delete(url + "/").status_code == 204
    assert upstream.connections == 1


def test_upstream_closing_before_its_content_length_cuts_the_client_off(
    gateway: Callable[[Script], tuple[httpx.Client, str, RawUpstream]],
) -> None:
    def script(head: bytes) -> list[bytes | None]:
        if b"/short" in head:
            return [b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n", b"x" * 50, None]
        return [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"]

    client, url, _ = gateway(script)
    with client:
        with pytest.raises(httpx.HTTPError), client.stream("GET", url + "/short") as response:
            got = b"".join(response.iter_raw())
        assert client.get(url + "/after").content == b"ok"
    assert "got" not in locals() or len(got) < 100


def test_upstream_sending_more_than_its_content_length_is_cut_at_the_length(
    gateway: Callable[[Script], tuple[httpx.Client, str, RawUpstream]],
) -> None:
    client, url, upstream = gateway(
        lambda _head: [b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhelloSMUGGLED"]
    )
    with client:
        assert client.get(url + "/").content == b"hello"
        assert client.get(url + "/").content == b"hello"
    # the connection with bytes left over was not reused
    assert upstream.connections == 2


@pytest.mark.parametrize(
    "body",
    [
        b"1" * (MAX_CHUNK_LINE + 10),  # a chunk-size line that never ends
        b"5\r\nhelloXX",  # no CRLF after the chunk's data
        b"zz\r\n",  # not hex
        b"5\r\nhel",  # the upstream closes mid-chunk
    ],
    ids=["endless size line", "no CRLF", "not hex", "closed mid-chunk"],
)
def test_broken_chunked_framing_cuts_the_client_off(
    gateway: Callable[[Script], tuple[httpx.Client, str, RawUpstream]], body: bytes
) -> None:
    def script(head: bytes) -> list[bytes | None]:
        if b"/broken" in head:
            return [CHUNKED_HEAD, body, None]
        return [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"]

    client, url, _ = gateway(script)
    with client:
        with pytest.raises(httpx.HTTPError), client.stream("GET", url + "/broken") as response:
            b"".join(response.iter_raw())
        assert client.get(url + "/after").content == b"ok"


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 two hundred\r\n\r\n",
        b"not http at all\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n" + b"x-filler: " + b"a" * 200_000 + b"\r\n\r\n",
        b"",
    ],
    ids=["bad status", "not http", "unknown coding", "oversized head", "nothing"],
)
def test_a_garbled_or_missing_response_head_is_a_502(
    gateway: Callable[[Script], tuple[httpx.Client, str, RawUpstream]], answer: bytes
) -> None:
    client, url, _ = gateway(lambda _head: [answer, None])
    with client:
        response = client.get(url + "/")
    assert response.status_code == 502
    assert response.text == "upstream unavailable\n"


def test_an_idle_upstream_connection_closed_by_the_upstream_is_replaced(
    gateway: Callable[[Script], tuple[httpx.Client, str, RawUpstream]],
) -> None:
    # a keep-alive response, then the upstream drops the idle connection (as uvicorn does
    # after its keep-alive timeout): the next request goes on a new connection
    client, url, upstream = gateway(
        lambda _head: [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", None]
    )
    with client:
        assert client.get(url + "/").content == b"ok"
        time.sleep(0.2)
        assert client.get(url + "/").content == b"ok"
    assert upstream.connections == 2


def test_an_interim_100_continue_is_skipped(
    gateway: Callable[[Script], tuple[httpx.Client, str, RawUpstream]],
) -> None:
    client, url, _ = gateway(
        lambda _head: [
            b"HTTP/1.1 100 Continue\r\n\r\n",
            b"HTTP/1.1 201 Created\r\ncontent-length: 4\r\n\r\ndone",
        ]
    )
    with client:
        response = client.post(url + "/", content=b"body")
    assert response.status_code == 201
    assert response.content == b"done"


def test_a_chunked_request_with_a_length_beside_it_goes_on_chunked(
    gateway: Callable[[Script], tuple[httpx.Client, str, RawUpstream]],
) -> None:
    # chunked framing wins over a Content-Length beside it; forwarding that length with
    # the decoded body would let the upstream read a different request than the gateway
    ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
    client, url, upstream = gateway(lambda _head: [ok])
    port = int(url.rsplit(":", 1)[1])
    stream = TlsStream.client(
        client_context(), socket.create_connection(("127.0.0.1", port)), 10, None
    )
    try:
        stream.handshake()
        stream.write(
            b"POST /x HTTP/1.1\r\nhost: g\r\ncontent-length: 5\r\ntransfer-encoding: chunked"
            b"\r\n\r\na\r\n0123456789\r\n0\r\n\r\n"
        )
        answer = stream.read()
    finally:
        stream.close()
        client.close()
    assert answer.startswith(b"HTTP/1.1 200 ")
    head = upstream.heads[0].lower()
    assert b"\r\ntransfer-encoding: chunked" in head
    assert b"content-length" not in head


def _raw_exchange(url: str, request: bytes) -> bytes:
    """Everything the gateway sends back on one raw TLS connection until it closes it
    (a connection it keeps open ends the reading after a second's silence)."""
    port = int(url.rsplit(":", 1)[1])
    stream = TlsStream.client(
        client_context(), socket.create_connection(("127.0.0.1", port)), 10, None
    )
    got = b""
    try:
        stream.handshake()
        stream.write(request)
        while more := stream.read(timeout=1):
            got += more
    except TimeoutError:
        got += b"<still open>"
    finally:
        stream.close()
    return got


def test_a_request_with_both_lengths_ends_its_connection(
    gateway: Callable[[Script], tuple[httpx.Client, str, RawUpstream]],
) -> None:
    # a server must close the connection after a request framed both ways: a request
    # behind it on the same connection could be read differently by another parser
    ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
    client, url, upstream = gateway(lambda _head: [ok])
    answer = _raw_exchange(
        url,
        b"POST /x HTTP/1.1\r\nhost: g\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n"
        b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nhost: g\r\n\r\n",
    )
    client.close()
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert answer.count(b"HTTP/1.1") == 1
    assert answer.endswith(b"ok")
    assert not any(b"/smuggled" in head for head in upstream.heads)


def test_connect_is_refused_whatever_its_target(
    gateway: Callable[[Script], tuple[httpx.Client, str, RawUpstream]],
) -> None:
    # a 2xx to CONNECT turns the upstream connection into a tunnel; the gateway is no
    # tunnel, and must not pool such a connection for another client's request
    ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"
    client, url, upstream = gateway(lambda _head: [ok])
    answer = _raw_exchange(url, b"CONNECT /x HTTP/1.1\r\nhost: g\r\n\r\n")
    client.close()
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert upstream.heads == []


def test_the_client_cannot_claim_its_own_forwarding_headers(
    gateway: Callable[[Script], tuple[httpx.Client, str, RawUpstream]],
) -> None:
    # the upstream learns the client's address and scheme from the gateway alone: a
    # client's own X-Forwarded-For or Forwarded (which a server may read first) is dropped
    ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
    client, url, upstream = gateway(lambda _head: [ok])
    with client:
        response = client.get(
            url + "/",
            headers={
                "x-forwarded-for": "203.0.113.9",
                "x-forwarded-proto": "http",
                "forwarded": "for=203.0.113.9;proto=http",
            },
        )
    assert response.content == b"ok"
    head = upstream.heads[0].lower()
    assert b"203.0.113.9" not in head
    assert head.count(b"\r\nx-forwarded-for: 127.0.0.1") == 1
    assert head.count(b"\r\nx-forwarded-proto: https") == 1
    assert b"\r\nforwarded:" not in head
