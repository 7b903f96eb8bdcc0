"""Lazy-trust TLS contexts: verifying from the start, CA store read on the first handshake."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelseal.loader.tls import certifi_trust, system_trust
from tests.conftest import self_signed_cert
from tests.unit.loader.blobserver import BlobServer


def _loaded(ctx: ssl.SSLContext) -> int:
    return int(ctx.cert_store_stats()["x509_ca"])


@pytest.mark.parametrize("make", [system_trust, certifi_trust])
def test_verifying_but_empty_until_first_use(make: object) -> None:
    ctx = make()  # type: ignore[operator]
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.check_hostname
    assert _loaded(ctx) == 0
    with socket.socket() as raw:
        ctx.wrap_socket(raw, server_hostname="example.com", do_handshake_on_connect=False)
    if make is system_trust and not ssl.get_default_verify_paths().cafile:
        pytest.skip("this machine has no system CA bundle")
    assert _loaded(ctx) > 10  # the store is read before the (first) wrap, once
    before = _loaded(ctx)
    ctx.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_hostname="example.com")
    assert _loaded(ctx) == before


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[int]:
    """A TLS server on 127.0.0.1 with a fresh self-signed certificate; yields its port."""
    cert, key = self_signed_cert(tmp_path)
    with BlobServer(tls=(str(cert), str(key))).running() as server:
        yield int(server.url.rsplit(":", 1)[1])


def test_an_untrusted_certificate_is_refused(tls_server: int) -> None:
    ctx = system_trust()
    with (
        socket.create_connection(("127.0.0.1", tls_server)) as raw,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        ctx.wrap_socket(raw, server_hostname="127.0.0.1")


def test_a_failed_ca_load_is_retried_not_skipped() -> None:
    """A store that failed to load must not leave a context that handshakes without it."""
    from modelseal.loader import tls

    calls: list[int] = []

    def flaky(ctx: ssl.SSLContext) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise ssl.SSLError("cannot read the bundle")
        import certifi

        ctx.load_verify_locations(cafile=certifi.where())

    ctx = tls._lazy(flaky)
    with socket.socket() as raw, pytest.raises(ssl.SSLError, match="cannot read"):
        ctx.wrap_socket(raw, server_hostname="example.com", do_handshake_on_connect=False)
    assert _loaded(ctx) == 0
    with socket.socket() as raw:
        ctx.wrap_socket(raw, server_hostname="example.com", do_handshake_on_connect=False)
    assert len(calls) == 2
    assert _loaded(ctx) > 10
