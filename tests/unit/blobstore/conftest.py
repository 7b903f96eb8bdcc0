"""A moto S3 server on loopback for the S3 blob store's tests (one per test module)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tests.conftest import free_port


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    moto_server = pytest.importorskip("moto.server")
    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
