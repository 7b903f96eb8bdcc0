from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.unit.loader.blobserver import BlobServer


@pytest.fixture
def blob_server() -> Iterator[BlobServer]:
    with BlobServer().running() as server:
        yield server
