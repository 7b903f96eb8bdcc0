"""KBS schema migrations on SQLite: the pre-migration fixture, fresh databases, refusals.

Process-level tests (``kbs serve`` refusing, ``kill -9`` during ``kbs migrate``) are in
tests/e2e/test_kbs_migrate_cli.py; the PostgreSQL ones in test_migrations_postgres.py.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from modelseal.errors import ConfigError
from modelseal.kbs import migrations, schema
from modelseal.kbs.db import Database, sqlite_url
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


def _db(data_dir: Path) -> Database:
    return Database(sqlite_url(data_dir))


def _tables(data_dir: Path) -> list[tuple[str, str]]:
    """The schema as SQLite stores it (type, name, SQL), to compare before/after."""
    with sqlite3.connect(data_dir / "kbs.sqlite3") as conn:
        return sorted(conn.execute("SELECT type, name, sql FROM sqlite_master").fetchall())


def test_fixture_upgrades_to_head_with_data_intact(tmp_path: Path) -> None:
    data = copy_fixture(tmp_path / "kbs")
    exp = expected()
    with pytest.raises(ConfigError) as refused:
        KbsState.open(data)
    assert f"modelseal kbs migrate --data-dir {data}" in str(refused.value)
    assert "before schema migrations" in str(refused.value)

    db = _db(data)
    try:
        report = schema.migrate(db)
        assert report.adopted
        assert not report.fresh
        assert report.before is None
        assert report.after == schema.head()
        assert report.created_tables == ()
        assert schema.status(db).current
        again = schema.migrate(db)  # idempotent
        assert (again.before, again.applied, again.adopted) == (schema.head(), (), False)
    finally:
        db.dispose()

    state = KbsState.open(data)
    try:
        check_contents(state, exp)
        check_still_serves(state, exp)
    finally:
        state.close()


def test_head_matches_the_models(tmp_path: Path) -> None:
    """A database made by the migrations is exactly what the models declare: a model
    change without its revision fails here, listing the differences."""
    state = KbsState.open(tmp_path / "kbs")
    try:
        with state.db.engine.connect() as conn:
            assert schema.differences(conn, model_metadata()) == []
            assert schema.differences(conn, baseline.metadata()) == []
    finally:
        state.close()


def test_the_head_constant_is_alembics_head() -> None:
    """A start on a current database compares with ``HEAD`` without loading Alembic."""
    assert schema.head() == migrations.HEAD


def test_only_exactly_head_is_current_without_alembic(tmp_path: Path) -> None:
    """Anything but one row naming head (none, two, another revision) goes to Alembic."""
    KbsState.open(tmp_path).close()
    db = _db(tmp_path)
    try:
        cases = [
            ("SELECT 1", True),
            (f"UPDATE ms_schema_version SET version_num = '{migrations.HEAD[:-1]}9'", False),
            (f"UPDATE ms_schema_version SET version_num = '{migrations.HEAD}'", True),
            ("INSERT INTO ms_schema_version VALUES ('0001')", False),
            ("DROP TABLE ms_schema_version", False),
        ]
        for statement, current in cases:
            with sqlite3.connect(tmp_path / "kbs.sqlite3") as conn:
                conn.execute(statement)
            with db.read_connection() as conn:
                assert migrations.stamped_at_head(conn) is current, statement
    finally:
        db.dispose()


def test_fresh_database_is_created_at_head(tmp_path: Path) -> None:
    state = KbsState.open(tmp_path / "kbs")
    try:
        found = schema.status(state.db)
        assert found.revision == schema.head()
        assert found.tables == frozenset(baseline.metadata().tables)
    finally:
        state.close()
    KbsState.open(tmp_path / "kbs").close()  # reopening a current database changes nothing


def test_migrate_on_an_empty_database_creates_it(tmp_path: Path) -> None:
    (tmp_path / "kbs.sqlite3").touch()
    db = _db(tmp_path)
    try:
        report = schema.migrate(db)
        assert report.fresh
        assert report.after == schema.head()
        assert "empty database" in report.lines()[0]
        assert schema.status(db).current
    finally:
        db.dispose()


def test_concurrent_first_opens_create_the_schema_once(tmp_path: Path) -> None:
    """Workers starting together on an empty database: one creates it, all start."""
    open_concurrently([_db(tmp_path) for _ in range(6)], tmp_path, None)


def test_pre_migration_database_missing_the_session_table(tmp_path: Path) -> None:
    """Old code made kbs_rcar_sessions only when the HTTP app started; adoption creates it."""
    data = copy_fixture(tmp_path / "kbs")
    with sqlite3.connect(data / "kbs.sqlite3") as conn:
        conn.execute("DROP TABLE kbs_rcar_sessions")
    db = _db(data)
    try:
        report = schema.migrate(db)
        assert report.adopted
        assert report.created_tables == ("kbs_rcar_sessions",)
        assert "created missing tables: kbs_rcar_sessions" in report.lines()
        with db.engine.connect() as conn:
            assert schema.differences(conn, baseline.metadata()) == []
    finally:
        db.dispose()
    state = KbsState.open(data)
    try:
        check_contents(state, expected())
    finally:
        state.close()


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        ("DROP INDEX ix_ms_keys_kek_id", "index ix_ms_keys_kek_id on ms_keys missing"),
        ("ALTER TABLE ms_audit ADD COLUMN extra TEXT", "column ms_audit.extra unexpected"),
        (
            "ALTER TABLE ms_transfer_nonces DROP COLUMN key_id",
            "column ms_transfer_nonces.key_id missing",
        ),
    ],
)
def test_pre_migration_database_that_does_not_match_is_refused(
    tmp_path: Path, edit: str, named: str
) -> None:
    data = copy_fixture(tmp_path / "kbs")
    with sqlite3.connect(data / "kbs.sqlite3") as conn:
        conn.execute(edit)
    before = _tables(data)
    db = _db(data)
    try:
        with pytest.raises(ConfigError, match="cannot be adopted") as refused:
            schema.migrate(db)
        assert named in str(refused.value)
    finally:
        db.dispose()
    assert _tables(data) == before  # nothing stamped, nothing created


def test_unknown_revision_is_refused(tmp_path: Path) -> None:
    """A database migrated by a newer release: neither serve nor migrate touches it."""
    KbsState.open(tmp_path).close()
    with sqlite3.connect(tmp_path / "kbs.sqlite3") as conn:
        conn.execute("UPDATE ms_schema_version SET version_num = '9999'")
    with pytest.raises(ConfigError, match="revision 9999, which this modelseal does not know"):
        KbsState.open(tmp_path)
    db = _db(tmp_path)
    try:
        with pytest.raises(ConfigError, match="newer release"):
            schema.migrate(db)
    finally:
        db.dispose()


def test_database_behind_head_is_refused_then_upgraded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a (test-only) revision 0003 after the shipped 0002, a 0002 database is behind
    head."""
    data = copy_fixture(tmp_path / "kbs")
    db = _db(data)
    try:
        schema.migrate(db)  # the fixture at the shipped head, 0002
    finally:
        db.dispose()
    use_extra_revision(monkeypatch)
    assert schema.head() == "0003"
    with pytest.raises(ConfigError) as refused:
        KbsState.open(data)
    message = str(refused.value)
    assert "revision 0002, behind this release's 0003" in message
    assert f"`modelseal kbs migrate --data-dir {data}`" in message

    db = _db(data)
    try:
        report = schema.migrate(db)
        assert (report.before, report.applied, report.after) == ("0002", ("0003",), "0003")
        assert report.lines()[-2:] == ["applied revisions: 0003", "now at revision 0003 (head)"]
    finally:
        db.dispose()
    state = KbsState.open(data)
    try:
        check_contents(state, expected())
    finally:
        state.close()
    with sqlite3.connect(data / "kbs.sqlite3") as conn:
        columns = [row[1] for row in conn.execute("PRAGMA table_info(ms_keys)")]
    assert "note_test" in columns


def test_failed_upgrade_leaves_the_database_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error midway through a revision rolls back its DDL and the adoption before it."""
    data = copy_fixture(tmp_path / "kbs")
    before = _tables(data)
    use_extra_revision(monkeypatch)
    from alembic.operations import Operations

    real = Operations.batch_alter_table

    def failing(self: Operations, *args: object, **kwargs: object) -> object:
        raise RuntimeError("simulated failure after the index was created")

    monkeypatch.setattr(Operations, "batch_alter_table", failing)
    db = _db(data)
    try:
        with pytest.raises(RuntimeError, match="simulated failure"):
            schema.migrate(db)
        assert _tables(data) == before  # no index, no version table, no stamp
        monkeypatch.setattr(Operations, "batch_alter_table", real)
        report = schema.migrate(db)
        assert report.adopted
        assert report.applied == ("0002", "0003")
    finally:
        db.dispose()
