"""Shared fixtures: the attestation vectors, free loopback ports, a TLS certificate, a
throwaway PostgreSQL server with one fresh database per test."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.hsm import SoftHsm
    from tests.pg import PgServer
    from tests.rgw import RgwServer

ROOT = Path(__file__).resolve().parent.parent
ATTESTATION_VECTORS = ROOT / "tests" / "vectors" / "attestation"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Leave ``soak`` tests out unless the ``-m`` expression names them (``make soak``), so
    a plain run, or ``-m postgres``, never starts a run of hundreds of kill points."""
    if "soak" in (config.getoption("markexpr") or ""):
        return
    soak = [item for item in items if item.get_closest_marker("soak") is not None]
    if soak:
        config.hook.pytest_deselected(items=soak)
        items[:] = [item for item in items if item.get_closest_marker("soak") is None]


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


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One throwaway PostgreSQL server for the whole run (skips without the binaries)."""
    from tests.pg import PgServer, bin_dir

    bindir = bin_dir()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries are not installed (apt-get install postgresql-15)")
    try:
        server = PgServer(bindir)
    except RuntimeError as exc:
        pytest.skip(str(exc))
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="session")
def softhsm() -> Iterator[SoftHsm]:
    """A SoftHSM2 token directory for the whole run (skips without softhsm2), with one token
    ``modelseal`` made before this process loads the module (see tests/hsm.py)."""
    from tests.hsm import SoftHsm, module_path

    module = module_path()
    if module is None:
        pytest.skip("SoftHSM2 is not installed (apt-get install softhsm2)")
    hsm = SoftHsm.create(module)
    hsm.token("modelseal")
    previous = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = str(hsm.conf)
    try:
        yield hsm
    finally:
        if previous is None:
            os.environ.pop("SOFTHSM2_CONF", None)
        else:
            os.environ["SOFTHSM2_CONF"] = previous
        hsm.remove()


@pytest.fixture(scope="session")
def rgw() -> Iterator[RgwServer]:
    """One Ceph RGW (a real S3 server) per test process; the tests using it carry
    ``@pytest.mark.xdist_group("rgw")`` so a run starts it once (skips without Ceph)."""
    from tests.rgw import RgwServer, available

    if not available():
        pytest.skip("Ceph RGW is not installed (apt-get install radosgw ceph-mon ceph-osd)")
    server = RgwServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def kek_uri(softhsm: SoftHsm) -> str:
    """A pkcs11: URI of a KEK label no other test uses, in the session's token."""
    from tests.hsm import unique_object

    return softhsm.uri("modelseal", softhsm.base / "modelseal.pin", unique_object())


@pytest.fixture
def pg_url(pg_server: PgServer, request: pytest.FixtureRequest) -> str:
    """A fresh, empty database on the session's PostgreSQL server, for this test only."""
    return pg_server.create_database(request.node.name)
