"""Shared fixtures: the attestation vectors, free loopback ports, a TLS certificate."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ATTESTATION_VECTORS = ROOT / "tests" / "vectors" / "attestation"


@pytest.fixture(scope="session")
def shared_vectors() -> Path:
    """``tests/vectors/attestation``: real public attestation evidence (TDX, SGX, SNP, TPM,
    NVIDIA, event logs) with expected results; its README names each file's source
    repository, commit and license. Part of the repository, so no test skips for it."""
    assert (ATTESTATION_VECTORS / "expected.json").is_file(), ATTESTATION_VECTORS
    return ATTESTATION_VECTORS


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """A fresh P-256 certificate for 127.0.0.1 (1 day) and its key, as PEM files in
    ``directory``: ``(cert, key)``."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key
