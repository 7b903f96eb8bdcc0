"""KBS schema migrations on PostgreSQL (throwaway server from test_postgres.py's fixtures).

The pre-migration fixture is carried over to PostgreSQL by creating revision 0001's tables
the way old code's ``create_all()`` did and copying the SQLite fixture's rows into them.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import text

from modelseal.errors import ConfigError
from modelseal.kbs import schema
from modelseal.kbs.db import Database
from modelseal.kbs.migrations import baseline
from modelseal.kbs.state import KbsState
from tests.integration.kbs_admin.fixture_db import (
    check_contents,
    check_still_serves,
    copy_fixture,
    expected,
    model_metadata,
    open_concurrently,
    use_extra_revision,
)

pytestmark = pytest.mark.postgres


def _legacy_postgres(pg_url: str, data_dir: Path) -> None:
    """What old code left in PostgreSQL: its tables (no version table) and the rows."""
    meta = baseline.metadata()
    db = Database(pg_url)
    try:
        with db.engine.begin() as conn:
            meta.create_all(conn)
            with sqlite3.connect(data_dir / "kbs.sqlite3") as source:
                for table in meta.sorted_tables:
                    cursor = source.execute(f"SELECT * FROM {table.name}")
                    names = [c[0] for c in cursor.description]
                    rows = [dict(zip(names, row, strict=True)) for row in cursor]
                    if rows:
                        conn.execute(table.insert(), rows)
    finally:
        db.dispose()


def test_fixture_upgrades_on_postgres(pg_url: str, tmp_path: Path) -> None:
    data = copy_fixture(tmp_path / "kbs")
    _legacy_postgres(pg_url, data)
    exp = expected()
    with pytest.raises(ConfigError) as refused:
        KbsState.open(data, database_url=pg_url)
    message = str(refused.value)
    assert f"modelseal kbs migrate --data-dir {data} --database-url URL" in message
    assert "postgres@" not in message  # the URL (and any password in it) is never shown

    db = Database(pg_url)
    try:
        report = schema.migrate(db)
        assert report.adopted
        assert report.after == schema.head()
        with db.engine.connect() as conn:
            assert schema.differences(conn, model_metadata()) == []
    finally:
        db.dispose()
    state = KbsState.open(data, database_url=pg_url)
    try:
        check_contents(state, exp)
        check_still_serves(state, exp)
    finally:
        state.close()


def test_fresh_postgres_is_created_at_head_and_matches_the_models(
    pg_url: str, tmp_path: Path
) -> None:
    state = KbsState.open(tmp_path / "kbs", database_url=pg_url)
    try:
        assert schema.status(state.db).current
        with state.db.engine.connect() as conn:
            assert schema.differences(conn, model_metadata()) == []
    finally:
        state.close()


def test_replicas_starting_on_an_empty_postgres_create_it_once(pg_url: str, tmp_path: Path) -> None:
    open_concurrently([Database(pg_url) for _ in range(4)], tmp_path, pg_url)


def test_type_and_nullability_mismatches_are_refused(pg_url: str, tmp_path: Path) -> None:
    data = copy_fixture(tmp_path / "kbs")
    _legacy_postgres(pg_url, data)
    db = Database(pg_url)
    try:
        with db.engine.begin() as conn:
            conn.execute(text("ALTER TABLE ms_audit_head ALTER COLUMN mac TYPE VARCHAR(128)"))
            conn.execute(text("ALTER TABLE ms_keys ALTER COLUMN mac DROP NOT NULL"))
        with pytest.raises(ConfigError, match="cannot be adopted") as refused:
            schema.migrate(db)
        message = str(refused.value)
        assert "column ms_audit_head.mac type is VARCHAR(128), expected VARCHAR(64)" in message
        assert "column ms_keys.mac nullable is True, expected False" in message
        assert schema.status(db).revision is None  # nothing stamped
    finally:
        db.dispose()


def test_behind_head_and_failed_upgrade_on_postgres(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 0002 database with a (test-only) 0003 head: refused, then upgraded; an error in
    the middle of 0003 leaves it at 0002 with none of 0003's changes."""
    data = tmp_path / "kbs"
    KbsState.open(data, database_url=pg_url).close()
    use_extra_revision(monkeypatch)
    with pytest.raises(ConfigError, match="revision 0002, behind this release's 0003"):
        KbsState.open(data, database_url=pg_url)

    from alembic.operations import Operations

    real = Operations.batch_alter_table

    def failing(self: Operations, *args: object, **kwargs: object) -> object:
        raise RuntimeError("simulated failure after the index was created")

    db = Database(pg_url)
    try:
        monkeypatch.setattr(Operations, "batch_alter_table", failing)
        with pytest.raises(RuntimeError, match="simulated failure"):
            schema.migrate(db)
        with db.engine.connect() as conn:
            indexes = conn.execute(
                text("SELECT indexname FROM pg_indexes WHERE tablename = 'ms_audit'")
            ).scalars()
            assert "ix_ms_audit_action_test" not in set(indexes)
        assert schema.status(db).revision == "0002"
        monkeypatch.setattr(Operations, "batch_alter_table", real)
        assert schema.migrate(db).applied == ("0003",)
    finally:
        db.dispose()
    KbsState.open(data, database_url=pg_url).close()
