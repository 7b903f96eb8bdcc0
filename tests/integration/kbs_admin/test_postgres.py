"""The same KBS state code on PostgreSQL: a throwaway server started by this fixture.

Needs the Debian ``postgresql-15`` binaries (scripts/system-packages.txt); skips when they
are absent. As root the server runs as the ``postgres`` user (PostgreSQL refuses root).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelseal.crypto.secret import SecretBytes
from modelseal.errors import PolicyDenied
from modelseal.kbs.state import KbsState
from modelseal.protocol.claims import Claims
from tests.conftest import free_port

pytestmark = pytest.mark.postgres

POLICY = {"apiVersion": "modelseal/v1", "kind": "ReleasePolicy", "tee": ["sample"]}
SAMPLE = Claims(tee="sample", debug=False, report_data=b"", insecure=True)


def _bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


@pytest.fixture(scope="module")
def pg_server() -> Iterator[tuple[list[str], Path, int]]:
    bindir = _bin_dir()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries are not installed (apt-get install postgresql-15)")
    # not under pytest's 0700 tmp root: the postgres user must be able to reach it
    base = Path(tempfile.mkdtemp(prefix="modelseal-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser")
        shutil.chown(base, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = base / "data", free_port()
    subprocess.run(
        [*as_user, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
        check=True,
        capture_output=True,
    )
    opts = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run(
        [
            *as_user,
            str(bindir / "pg_ctl"),
            "-D",
            str(data),
            "-o",
            opts,
            "-l",
            str(base / "log"),
            "-w",
            "start",
        ],
        check=True,
        capture_output=True,
    )
    try:
        yield as_user, bindir, port
    finally:
        subprocess.run(
            [*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"],
            capture_output=True,
        )
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def pg_url(pg_server: tuple[list[str], Path, int], request: pytest.FixtureRequest) -> str:
    """A fresh database per test on the module's server."""
    as_user, bindir, port = pg_server
    name = "kbs_" + request.node.name.replace("[", "_").replace("]", "").lower()[:40]
    subprocess.run(
        [
            *as_user,
            str(bindir / "createdb"),
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-U",
            "postgres",
            name,
        ],
        check=True,
        capture_output=True,
    )
    return f"postgresql://postgres@127.0.0.1:{port}/{name}"


def test_state_on_postgres(pg_url: str, tmp_path: Path) -> None:
    state = KbsState.open(tmp_path / "kbs", database_url=pg_url)
    try:
        dek = SecretBytes(os.urandom(32))
        state.keys.put("models/pg/v1", dek, policy=POLICY, actor="t")
        assert state.release("models/pg/v1", SAMPLE, token_id="t", requester="r") == dek
        state.keys.revoke("models/pg/v1", actor="t")
        with pytest.raises(PolicyDenied):
            state.release("models/pg/v1", SAMPLE, token_id="t", requester="r")
        nonce = state.issue_transfer_nonce("models/pg/v1")
        state.consume_transfer_nonce(nonce.value, "models/pg/v1")
        assert state.keys.rotate_kek(actor="t").rewrapped == 1
        assert state.audit.verify().ok
    finally:
        state.close()


def test_replicas_share_one_audit_chain(pg_url: str, tmp_path: Path) -> None:
    """Two KBS replicas (same KEK and credential, one database) append concurrently."""
    first = KbsState.open(tmp_path / "a", database_url=pg_url)
    second_dir = tmp_path / "b"
    second_dir.mkdir(mode=0o700)
    for name in ("kek", "admin-credential"):
        shutil.copy2(first.data_dir / name, second_dir / name)
    second = KbsState.open(second_dir, database_url=pg_url)
    try:
        first.keys.put("models/pg/shared", None, policy=POLICY, actor="t")
        before = first.audit.verify().rows
        errors: list[BaseException] = []

        def work(state: KbsState) -> None:
            try:
                for _ in range(25):
                    state.release("models/pg/shared", SAMPLE, token_id="t", requester="r")
            except BaseException as exc:  # asserted below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(s,)) for s in (first, second) * 3]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        result = second.audit.verify()
        assert result.ok
        assert result.rows == before + 150
    finally:
        first.close()
        second.close()
