"""Fetcher: ranged reads, resume after a cut connection, bounded retries, error mapping."""

from __future__ import annotations

import os

import pytest

from modelseal import errors
from modelseal.loader.fetch import Fetcher, RetryPolicy
from tests.conftest import self_signed_cert
from tests.unit.loader.blobserver import BlobServer

BLOB = os.urandom(300_000)


def _fetcher(attempts: int = 4) -> Fetcher:
    return Fetcher(retry=RetryPolicy(attempts=attempts), sleep=lambda _s: None, timeout=5)


def test_read_range_exact_bytes(blob_server: BlobServer) -> None:
    blob_server.blobs["/b"] = BLOB
    buf = bytearray(1000)
    with _fetcher() as f:
        f.read_range(blob_server.url + "/b", 5000, memoryview(buf))
        assert f.size(blob_server.url + "/b") == len(BLOB)
    assert bytes(buf) == BLOB[5000:6000]
    assert blob_server.requests[0][2] == "bytes=5000-5999"


def test_resume_after_connection_cut(blob_server: BlobServer) -> None:
    blob_server.blobs["/b"] = BLOB
    blob_server.faults.cut_after = [70_000, 10_000]
    buf = bytearray(200_000)
    with _fetcher() as f:
        f.read_range(blob_server.url + "/b", 1, memoryview(buf))
        assert f.retried == 2
    assert bytes(buf) == BLOB[1:200_001]
    ranges = [r[2] for r in blob_server.requests]
    # each retry asks only for what is still missing
    assert ranges == ["bytes=1-200000", "bytes=70001-200000", "bytes=80001-200000"]


def test_retries_5xx_then_succeeds(blob_server: BlobServer) -> None:
    blob_server.blobs["/b"] = BLOB
    blob_server.faults.statuses = [503, 502, 500]
    buf = bytearray(10)
    with _fetcher(attempts=4) as f:
        f.read_range(blob_server.url + "/b", 0, memoryview(buf))
        assert f.retried == 3
    assert bytes(buf) == BLOB[:10]


def test_gives_up_with_transient_error(blob_server: BlobServer) -> None:
    blob_server.blobs["/b"] = BLOB
    blob_server.faults.statuses = [503] * 10
    with _fetcher(attempts=3) as f, pytest.raises(errors.TransientError) as info:
        f.read_range(blob_server.url + "/b", 0, memoryview(bytearray(10)))
    assert info.value.exit_code == 75
    assert len(blob_server.requests) == 3


def test_connection_refused_is_transient() -> None:
    from tests.conftest import free_port

    url = f"http://127.0.0.1:{free_port()}/b"
    with _fetcher(attempts=2) as f, pytest.raises(errors.TransientError):
        f.read_range(url, 0, memoryview(bytearray(10)))


def test_404_is_not_found_without_retry(blob_server: BlobServer) -> None:
    with _fetcher() as f, pytest.raises(errors.BlobNotFound):
        f.read_range(blob_server.url + "/missing", 0, memoryview(bytearray(10)))
    assert len(blob_server.requests) == 1


def test_truncated_blob_is_format_error(blob_server: BlobServer) -> None:
    blob_server.blobs["/b"] = BLOB[:100]
    with _fetcher() as f:
        with pytest.raises(errors.FormatError):
            f.read_range(blob_server.url + "/b", 50, memoryview(bytearray(100)))
        with pytest.raises(errors.FormatError):
            f.read_range(blob_server.url + "/b", 200, memoryview(bytearray(10)))


def test_server_ignoring_range_is_refused(blob_server: BlobServer) -> None:
    blob_server.blobs["/b"] = BLOB
    blob_server.faults.ignore_range = True
    with _fetcher() as f:
        buf = bytearray(10)
        f.read_range(blob_server.url + "/b", 0, memoryview(buf))  # from 0 a 200 is usable
        assert bytes(buf) == BLOB[:10]
        with pytest.raises(errors.BackendError):
            f.read_range(blob_server.url + "/b", 10, memoryview(bytearray(10)))


def test_get_json(blob_server: BlobServer) -> None:
    blob_server.blobs["/j"] = b'{"a": 1}'
    blob_server.blobs["/bad"] = b"not json"
    blob_server.faults.statuses = [503]
    with _fetcher() as f:
        assert f.get_json(blob_server.url + "/j") == {"a": 1}
        with pytest.raises(errors.FormatError):
            f.get_json(blob_server.url + "/bad")
        with pytest.raises(errors.NotFound):
            f.get_json(blob_server.url + "/nope")


def test_forbidden_is_authorization_error(blob_server: BlobServer) -> None:
    blob_server.faults.statuses = [403]
    with _fetcher() as f, pytest.raises(errors.AuthorizationError):
        f.get_json(blob_server.url + "/j")


def test_backoff_is_bounded_and_jittered() -> None:
    policy = RetryPolicy(attempts=5, base_delay=0.5, max_delay=2.0)
    delays = [policy.delay(a) for a in range(1, 10) for _ in range(20)]
    assert all(0.0 <= d <= 2.0 for d in delays)
    assert len(set(delays)) > 10


def test_read_head_returns_total(blob_server: BlobServer) -> None:
    blob_server.blobs["/b"] = BLOB
    blob_server.blobs["/small"] = b"abc"
    blob_server.blobs["/empty"] = b""
    with _fetcher() as f:
        assert f.read_head(blob_server.url + "/b", 100) == (BLOB[:100], len(BLOB))
        assert f.read_head(blob_server.url + "/small", 100) == (b"abc", 3)
        assert f.read_head(blob_server.url + "/empty", 100) == (b"", 0)
        blob_server.faults.ignore_range = True
        assert f.read_head(blob_server.url + "/b", 100) == (BLOB[:100], len(BLOB))


@pytest.fixture(scope="module")
def tls_cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    cert, key = self_signed_cert(tmp_path_factory.mktemp("tls"))
    return str(cert), str(key)


def test_https_with_ca_bundle_and_untrusted(tls_cert: tuple[str, str]) -> None:
    with BlobServer(tls=tls_cert).running() as server:
        server.blobs["/b"] = BLOB
        server.blobs["/j"] = b"[1]"
        url = server.url + "/b"
        buf = bytearray(4096)
        with Fetcher(verify=tls_cert[0], sleep=lambda _s: None) as f:
            f.read_range(url, 10, memoryview(buf))  # direct http.client path
            assert bytes(buf) == BLOB[10:4106]
            assert f.get_json(server.url + "/j") == [1]  # httpx path
            assert f.read_head(url, 8) == (BLOB[:8], len(BLOB))
        with Fetcher(sleep=lambda _s: None) as f:  # system trust store: refused, no retries
            with pytest.raises(errors.ConfigError, match="not trusted"):
                f.read_range(url, 0, memoryview(buf))
            with pytest.raises(errors.ConfigError, match="not trusted"):
                f.get_json(server.url + "/j")
            assert f.retried == 0


def test_non_http_url_is_a_config_error_not_retried() -> None:
    with _fetcher(attempts=3) as f:
        with pytest.raises(errors.ConfigError, match="not an http"):
            f.get_json("ftp://127.0.0.1/x")
        with pytest.raises(errors.ConfigError, match="not an http"):
            f.read_range("file:///etc/passwd", 0, memoryview(bytearray(4)))
        assert f.retried == 0
