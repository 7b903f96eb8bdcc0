"""bounded_http against a hostile server on 127.0.0.1: caps, deadlines, encodings."""

from __future__ import annotations

import gzip
import time
from collections.abc import Iterator

import httpx
import pytest

from modelseal._internal.bounded_http import ERROR_BODY_BYTES, Deadline, send
from modelseal.errors import ConfigError, FormatError, TransientError
from tests.hostile_http import HostileServer, answer, endless


@pytest.fixture
def server() -> Iterator[HostileServer]:
    with HostileServer().running() as running:
        yield running


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30.0) as c:
        yield c


def test_body_within_cap_is_returned(server: HostileServer, client: httpx.Client) -> None:
    server.routes["GET /ok"] = answer(200, b'{"a": 1}')
    reply = send(client, "GET", server.url + "/ok", limit=8, seconds=30, what="doc")
    assert (reply.status_code, reply.content) == (200, b'{"a": 1}')


def test_endless_body_stops_at_the_cap(server: HostileServer, client: httpx.Client) -> None:
    """800 MB offered without a length: the client reads one chunk past 1 MiB, then hangs up."""
    server.routes["GET /big"] = endless(800 << 20, sent=server.sent)
    with pytest.raises(FormatError, match=r"big answer: response exceeds the 1048576-byte cap"):
        send(client, "GET", server.url + "/big", limit=1 << 20, seconds=30, what="big answer")
    # the server thread records each chunk after its write returns: wait for the first
    deadline = time.monotonic() + 30
    while "/big" not in server.sent and time.monotonic() < deadline:
        time.sleep(0.01)
    assert 0 < server.sent["/big"] < 800 << 20


def test_declared_length_over_the_cap_is_refused_before_reading(
    server: HostileServer, client: httpx.Client
) -> None:
    server.routes["GET /liar"] = endless(1 << 20, declared=5 << 30, sent=server.sent)
    with pytest.raises(FormatError, match="response of 5368709120 bytes exceeds"):
        send(client, "GET", server.url + "/liar", limit=1 << 20, seconds=30, what="doc")


def test_cap_one_byte_over(server: HostileServer, client: httpx.Client) -> None:
    server.routes["GET /x"] = answer(200, b"x" * 101, length=False)
    assert (
        len(send(client, "GET", server.url + "/x", limit=101, seconds=30, what="d").content) == 101
    )
    with pytest.raises(FormatError, match="100-byte cap"):
        send(client, "GET", server.url + "/x", limit=100, seconds=30, what="d")


def test_trickle_hits_the_overall_deadline(server: HostileServer, client: httpx.Client) -> None:
    """Each byte arrives well within the 30 s read timeout; the whole answer never does."""
    server.routes["GET /slow"] = endless(1 << 20, chunk=1, delay=0.02)
    with pytest.raises(TransientError, match=r"slow answer: no complete answer within 0.3 s"):
        send(client, "GET", server.url + "/slow", limit=1 << 20, seconds=0.3, what="slow answer")


def test_silent_peer_hits_the_deadline_not_the_read_timeout(
    server: HostileServer, client: httpx.Client
) -> None:
    """Headers, then nothing: the socket read waits at most the time left, then exit 75."""
    server.routes["GET /mute"] = endless(1, delay=60)
    with pytest.raises(TransientError, match=r"within 0\.3 s"):
        send(client, "GET", server.url + "/mute", limit=1 << 20, seconds=0.3, what="mute")


def test_error_body_is_cut_not_refused(server: HostileServer, client: httpx.Client) -> None:
    """An error's body only supplies a detail: its first 64 KiB are kept, the rest unread."""
    server.routes["GET /err"] = endless(800 << 20, status=500, sent=server.sent)
    reply = send(client, "GET", server.url + "/err", limit=1 << 20, seconds=30, what="e")
    assert reply.status_code == 500
    assert len(reply.content) == ERROR_BODY_BYTES


@pytest.mark.parametrize("encoding", ["gzip", "br", "deflate, gzip"])
def test_compressed_bodies_are_refused(
    server: HostileServer, client: httpx.Client, encoding: str
) -> None:
    bomb = gzip.compress(b" " * (8 << 20))  # 8 KiB on the wire, 8 MiB inflated
    server.routes["GET /z"] = answer(200, bomb, {"Content-Encoding": encoding})
    with pytest.raises(FormatError, match="refused a compressed response"):
        send(client, "GET", server.url + "/z", limit=1 << 20, seconds=30, what="z")


def test_requests_ask_for_identity(server: HostileServer, client: httpx.Client) -> None:
    seen: list[str | None] = []

    def script(handler: object) -> None:
        seen.append(handler.headers.get("Accept-Encoding"))  # type: ignore[attr-defined]
        answer(200, b"{}")(handler)  # type: ignore[arg-type]

    server.routes["GET /h"] = script
    send(client, "GET", server.url + "/h", limit=10, seconds=30, what="h")
    assert seen == ["identity"]


@pytest.mark.parametrize("seconds", [0, -1, float("inf"), float("nan")])
def test_deadline_must_be_positive_and_finite(seconds: float) -> None:
    with pytest.raises(ConfigError):
        Deadline(seconds)
