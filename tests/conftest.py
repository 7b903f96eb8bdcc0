"""Shared fixtures: the shared vectors folder, and free loopback ports."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_VECTORS = ROOT.parent / "shared" / "vectors"


@pytest.fixture(scope="session")
def shared_vectors() -> Path:
    """``../shared/vectors`` (real attestation evidence), or skip when it is absent."""
    if not SHARED_VECTORS.is_dir():
        pytest.skip(f"{SHARED_VECTORS} is absent: real-evidence vectors not available")
    return SHARED_VECTORS


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
