"""``modelseal kbs migrate`` and ``kbs serve`` as real processes on the pre-migration fixture.

* ``kbs serve`` refuses a database behind head and names the migrate command; after
  ``kbs migrate`` the same data directory serves and its audit chain verifies.
* ``kill -9`` of ``kbs migrate`` at points spread over its whole transaction (adoption of
  the old database, revision 0001's stamp, the ITA tables of 0002, the test-only revision
  0003's index and batch table copy, the commit) leaves the database exactly as it was,
  and a rerun completes.
  The harness pauses the real CLI inside a SQLAlchemy event (before the Nth statement, or
  just before COMMIT) and the test kills it there.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine

from modelseal.cli import main
from modelseal.errors import ConfigError
from modelseal.kbs import schema
from modelseal.kbs.db import Database, sqlite_url
from modelseal.kbs.state import KbsState
from tests.e2e.kbs_process import CLI, start_kbs
from tests.integration.kbs_admin.fixture_db import (
    check_contents,
    copy_fixture,
    expected,
    use_extra_revision,
)

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]

#: Runs the real CLI with the test-only revision 0003, pausing (to be killed) just before
#: statement number STOP_AT or just before COMMIT.
HARNESS = r"""
import os, sys, time
from sqlalchemy import event
from sqlalchemy.engine import Engine

stop_at, marker = os.environ["STOP_AT"], os.environ["MARKER"]
count = 0

def pause():
    with open(marker, "w") as fh:
        fh.write(str(count))
    time.sleep(300)

def before(conn, cursor, statement, parameters, context, executemany):
    global count
    count += 1
    if stop_at.isdigit() and count == int(stop_at):
        pause()

event.listen(Engine, "before_cursor_execute", before)
if stop_at == "commit":
    event.listen(Engine, "commit", lambda conn: pause())
from modelseal.kbs import migrations, schema
from modelseal.kbs.db import Database, sqlite_url
from tests.integration.kbs_admin.fixture_db import scripts_with_extra
schema.scripts = scripts_with_extra
migrations.HEAD = "0003"
from modelseal.cli import main
main(sys.argv[1:])
"""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT / "src"), str(ROOT), env.get("PYTHONPATH")) if p
    )
    return env


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, env=_env(), timeout=120, check=False
    )


def _schema_sql(data: Path) -> list[tuple[str, str, str]]:
    with sqlite3.connect(data / "kbs.sqlite3") as conn:
        return sorted(conn.execute("SELECT type, name, sql FROM sqlite_master").fetchall())


def test_serve_refuses_a_database_behind_head_then_migrate_fixes_it(tmp_path: Path) -> None:
    data = copy_fixture(tmp_path / "kbs-data")
    with pytest.raises(RuntimeError) as refused:
        start_kbs(data, "--insecure-allow-sample")
    message = str(refused.value)
    assert "kbs serve exited with 2" in message
    assert f"run `modelseal kbs migrate --data-dir {data}` once" in message

    done = _cli("kbs", "migrate", "--data-dir", str(data))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        f"sqlite database, schema head of this release: {schema.head()}",
        "database made before schema migrations: its tables match revision 0001; stamped it 0001",
        "applied revisions: 0002",
        f"now at revision {schema.head()} (head)",
    ]
    url, proc = start_kbs(data, "--insecure-allow-sample")
    try:
        assert httpx.get(url + "/readyz", timeout=5).status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    state = KbsState.open(data)
    try:
        check_contents(state, expected())
    finally:
        state.close()


def test_migrate_cli_refuses_a_directory_without_a_database(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["kbs", "migrate", "--data-dir", str(tmp_path / "typo")])
    assert info.value.code == 2
    assert "has no kbs.sqlite3: nothing to migrate" in capsys.readouterr().err
    assert not (tmp_path / "typo").exists()


def test_migrate_cli_is_safe_to_rerun(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    KbsState.open(tmp_path).close()
    with pytest.raises(SystemExit) as info:
        main(["kbs", "migrate", "--data-dir", str(tmp_path)])
    assert info.value.code == 0
    assert f"already at head ({schema.head()}); nothing to do" in capsys.readouterr().out


def _harness(data: Path, stop_at: str, marker: Path) -> subprocess.Popen[bytes]:
    env = _env() | {"STOP_AT": stop_at, "MARKER": str(marker)}
    return subprocess.Popen(
        [sys.executable, "-c", HARNESS, "kbs", "migrate", "--data-dir", str(data)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _statement_count(data: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    """How many statements the whole migration of ``data`` runs (in-process, same code)."""
    count = 0

    def counted(*_args: object) -> None:
        nonlocal count
        count += 1

    use_extra_revision(monkeypatch)
    event.listen(Engine, "before_cursor_execute", counted)
    db = Database(sqlite_url(data))
    try:
        assert schema.migrate(db).applied == ("0002", "0003")
    finally:
        event.remove(Engine, "before_cursor_execute", counted)
        db.dispose()
        monkeypatch.undo()
    return count


def test_kill_9_during_migrate_leaves_the_database_unchanged_and_a_rerun_completes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    total = _statement_count(copy_fixture(tmp_path / "count"), monkeypatch)
    assert total >= 10  # adoption reads, stamp, 0003's index and table copy
    points = sorted({2, total // 3, (2 * total) // 3, total})
    exp = expected()
    for point in [*map(str, points), "commit"]:
        data = copy_fixture(tmp_path / f"kill-{point}")
        before = _schema_sql(data)
        marker = tmp_path / f"kill-{point}.marker"
        proc = _harness(data, point, marker)
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, f"harness never reached {point}"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        assert _schema_sql(data) == before, f"killed at {point}: the schema changed"

        use_extra_revision(monkeypatch)
        with pytest.raises(ConfigError, match="kbs migrate"):
            KbsState.open(data)
        db = Database(sqlite_url(data))
        try:
            report = schema.migrate(db)  # the rerun, as `kbs migrate` runs it
        finally:
            db.dispose()
        assert (report.adopted, report.applied, report.after) == (True, ("0002", "0003"), "0003")
        state = KbsState.open(data)
        try:
            check_contents(state, exp)
        finally:
            state.close()
        monkeypatch.undo()
