"""Fixtures of the attested-TLS client tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.ratls_helpers import served_gateway


@pytest.fixture
def served(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A recording upstream behind a running mock-tdx gateway (see ``served_gateway``)."""
    with served_gateway(tmp_path) as gateway:
        yield gateway
