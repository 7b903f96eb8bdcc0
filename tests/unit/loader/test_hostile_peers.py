"""The loader's clients against hostile peers on 127.0.0.1: bounded memory, documented errors.

A registry decides how long every sealed header is (up to 1 MiB) and how many files a model
has, all before anything is authenticated; a KBS decides how long and how slow its answers
are. None of that may grow the loader's memory or end in a traceback.
"""

from __future__ import annotations

import base64
import json
import tracemalloc
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler

import pytest

from modelseal._internal.bounded_http import Deadline
from modelseal.errors import BackendError, FormatError, TransientError
from modelseal.format.header import MAX_HEADER_LEN
from modelseal.loader.fetch import Fetcher, RetryPolicy
from modelseal.loader.kbs_client import MAX_RESPONSE_BYTES, KbsClient
from modelseal.loader.loader import (
    HEAD_PROBE,
    HeaderBudget,
    fetch_heads,
    fetch_model_info,
    fetch_sealed_head,
)
from modelseal.protocol.model_info import ModelInfo
from modelseal.tee.sample.attester import Attester
from tests.hostile_http import (
    HostileServer,
    Script,
    answer,
    endless,
    hostile_kbs,
    model_info,
    padded_sealed_blob,
)
from tests.unit.loader.blobserver import BlobServer

FILES = 64
DEEP = b"[" * 100_000 + b"]" * 100_000


@pytest.fixture
def padded_registry() -> Iterator[tuple[BlobServer, ModelInfo]]:
    """300 files, each header padded to 1 MiB (one blob object, served under 300 names)."""
    blob = padded_sealed_blob(MAX_HEADER_LEN)
    with BlobServer().running() as server:
        for i in range(FILES):
            server.blobs[f"/f{i}"] = blob
        yield server, ModelInfo.from_data(model_info(server.url, FILES))


def test_parsed_heads_keep_no_header_bytes(padded_registry: tuple[BlobServer, ModelInfo]) -> None:
    """Even with the per-model cap lifted, 300 MiB of headers leave only their fields."""
    _server, info = padded_registry
    with Fetcher(retry=RetryPolicy(attempts=1)) as fetcher:
        tracemalloc.start()
        try:
            files = fetch_heads(fetcher, info, 4, HeaderBudget(limit=FILES * MAX_HEADER_LEN))
            retained, _peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert len(files) == FILES
    assert all(f.header.header_len == MAX_HEADER_LEN for f in files)
    assert retained < 4 << 20  # was > 64 MiB when each Header kept its raw bytes


def test_header_bytes_per_model_are_capped(padded_registry: tuple[BlobServer, ModelInfo]) -> None:
    server, info = padded_registry
    with (
        Fetcher(retry=RetryPolicy(attempts=1)) as fetcher,
        pytest.raises(FormatError, match=r"sealed headers of this model exceed 33554432 bytes"),
    ):
        fetch_heads(fetcher, info, 4)
    full_reads = [r for r in server.requests if r[2] and not r[2].endswith("-16383")]
    assert len(full_reads) <= 32  # the cap is charged before a long header is fetched
    assert len(server.requests) < FILES + 32  # pending heads are cancelled, not fetched


def test_header_budget_boundary() -> None:
    budget = HeaderBudget(limit=1000)
    budget.take(600, "a")
    budget.take(400, "b")  # exactly the limit
    with pytest.raises(FormatError, match="exceed 1000 bytes in total"):
        budget.take(1, "c")


def test_deep_model_info_is_a_format_error() -> None:
    server = HostileServer(
        {"GET /m": answer(200, b'{"id": "m", "url": "http://x/", "a": ' + DEEP + b"}")}
    )
    with server.running(), Fetcher(retry=RetryPolicy(attempts=1)) as fetcher:
        with pytest.raises(FormatError, match=r"invalid model info \(JSON document nested too"):
            fetch_model_info(fetcher, server.url + "/m")
        with pytest.raises(FormatError, match=r"not JSON \(JSON document nested too deeply"):
            fetcher.get_json(server.url + "/m")


def test_endless_model_info_stops_at_its_cap() -> None:
    server = HostileServer()
    server.routes["GET /m"] = endless(800 << 20, sent=server.sent)
    with (
        server.running(),
        Fetcher(retry=RetryPolicy(attempts=1)) as fetcher,
        pytest.raises(FormatError, match="exceeds the 16777216-byte cap"),
    ):
        fetch_model_info(fetcher, server.url + "/m")
    assert server.sent["/m"] < 800 << 20


def test_trickling_model_info_hits_the_deadline() -> None:
    server = HostileServer({"GET /m": endless(1 << 20, chunk=1, delay=0.02)})
    with (
        server.running(),
        Fetcher(timeout=0.3, retry=RetryPolicy(attempts=3)) as fetcher,
        pytest.raises(TransientError, match=r"no complete answer within 0\.3 s"),
    ):
        fetch_model_info(fetcher, server.url + "/m")
    assert server.hits == ["GET /m"]  # a trickling peer is not given another attempt


# --- KBS ------------------------------------------------------------------------------------


def _get(server: HostileServer, timeout: float = 30.0) -> None:
    with KbsClient(server.url, Attester(), tee="sample", timeout=timeout) as client:
        client.get_resource("models/m/v1")


def test_kbs_streaming_800_mb_stops_at_the_cap() -> None:
    server = hostile_kbs(None)
    server.routes["GET"] = endless(800 << 20, sent=server.sent)
    with (
        server.running(),
        pytest.raises(FormatError, match="KBS resource: response exceeds the 1048576-byte cap"),
    ):
        _get(server)
    assert sum(server.sent.values()) < 800 << 20
    assert MAX_RESPONSE_BYTES == 1 << 20


def test_kbs_trickle_hits_the_overall_deadline() -> None:
    server = hostile_kbs(endless(1 << 20, chunk=1, delay=0.02))
    with server.running(), pytest.raises(TransientError, match=r"within 0\.5 s"):
        _get(server, timeout=0.5)


def test_kbs_endless_challenge_stops_at_the_cap() -> None:
    server = hostile_kbs(None)
    server.routes["POST /kbs/v0/auth"] = endless(800 << 20, sent=server.sent)
    with server.running(), pytest.raises(FormatError, match="KBS auth: response exceeds"):
        _get(server)


@pytest.mark.parametrize(
    ("route", "body", "error", "message"),
    [
        ("GET", b'{"detail": ' + DEEP + b"}", TransientError, r"KBS failed: HTTP 500\Z"),
        ("POST /kbs/v0/auth", DEEP, TransientError, r"KBS auth failed: HTTP 500\Z"),
    ],
)
def test_deep_kbs_error_bodies(
    route: str, body: bytes, error: type[Exception], message: str
) -> None:
    server = hostile_kbs(None)
    server.routes[route] = answer(500, body)
    with server.running(), pytest.raises(error, match=message):
        _get(server)


@pytest.mark.parametrize(
    ("resource", "message"),
    [
        (DEEP, "KBS resource response is not JSON .*nested too deeply"),
        (b'{"token": ' + DEEP + b"}", "not JSON"),
    ],
)
def test_deep_kbs_success_bodies(resource: bytes, message: str) -> None:
    server = hostile_kbs(answer(200, resource))
    with server.running(), pytest.raises(FormatError, match=message):
        _get(server)


def test_deep_kbs_token_body() -> None:
    server = hostile_kbs(None)
    server.routes["POST /kbs/v0/attest"] = answer(200, b'{"token": ' + DEEP + b"}")
    with server.running(), pytest.raises(FormatError, match="malformed KBS token"):
        _get(server)


def _jwe(protected: bytes) -> bytes:
    text = base64.urlsafe_b64encode(protected).rstrip(b"=").decode()
    return json.dumps(
        {
            "protected": text,
            "encrypted_key": "AA",
            "iv": "A" * 16,
            "ciphertext": "AA",
            "tag": "A" * 22,
        }
    ).encode()


@pytest.mark.parametrize(
    "protected",
    [
        b'{"alg": "ECDH-ES+A256KW", "enc": "A256GCM", "epk": [1, 2]}',
        b'{"alg": "ECDH-ES+A256KW", "enc": "A256GCM", "epk": "P-256"}',
        b'{"alg": "ECDH-ES+A256KW", "enc": "A256GCM", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    ],
)
def test_malformed_jwe_from_the_kbs_is_a_format_error(protected: bytes) -> None:
    server = hostile_kbs(answer(200, _jwe(protected)))
    with server.running(), pytest.raises(FormatError, match="JWE"):
        _get(server)


def test_compressed_kbs_answer_is_refused() -> None:
    server = hostile_kbs(answer(200, b"\x1f\x8b", {"Content-Encoding": "gzip"}))
    with server.running(), pytest.raises(FormatError, match="compressed"):
        _get(server)


def test_kbs_unknown_status_with_endless_body() -> None:
    server = hostile_kbs(endless(800 << 20, status=418))
    with server.running(), pytest.raises(BackendError, match="HTTP 418"):
        _get(server)


def _trickle_after(head: bytes, total: int) -> Script:
    """Ranged answers: the first ``len(head)`` bytes at once (the loader's head probe), any
    other range one byte every 20 ms (a long header, the manifest)."""

    def script(handler: BaseHTTPRequestHandler) -> None:
        first, last = (int(x) for x in handler.headers["Range"][6:].split("-"))
        last = min(last, total - 1)
        handler.send_response(206)
        handler.send_header("Content-Range", f"bytes {first}-{last}/{total}")
        handler.send_header("Content-Length", str(last - first + 1))
        handler.end_headers()
        if last < len(head):
            handler.wfile.write(head[first : last + 1])
            return
        endless(last - first + 1, chunk=1, delay=0.02)(handler)

    return script


def test_trickling_long_header_hits_the_deadline() -> None:
    blob = padded_sealed_blob(64 << 10)
    server = HostileServer({"GET /f": _trickle_after(blob[:HEAD_PROBE], len(blob))})
    with (
        server.running(),
        Fetcher(timeout=0.3, retry=RetryPolicy(attempts=3)) as fetcher,
        pytest.raises(TransientError, match=r"/f: no complete answer within 0\.3 s"),
    ):
        fetch_sealed_head(fetcher, server.url + "/f", HeaderBudget())


def test_read_range_with_a_deadline_ends_a_trickle() -> None:
    server = HostileServer({"GET /blob": _trickle_after(b"", 1 << 20)})
    with (
        server.running(),
        Fetcher(timeout=30, retry=RetryPolicy(attempts=3)) as fetcher,
        pytest.raises(TransientError, match=r"within 0\.3 s"),
    ):
        fetcher.read_range(
            server.url + "/blob", 0, memoryview(bytearray(1 << 20)), deadline=Deadline(0.3)
        )
