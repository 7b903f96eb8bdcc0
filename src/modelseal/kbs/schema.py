"""The KBS database schema: made and upgraded only by the Alembic revisions in ``migrations/``.

Two entry points:

* :func:`ensure_current` (every ``KbsState.open``, so every ``kbs serve`` worker and replica):
  a database at the head revision is used as it is; a database with no KBS tables at all is
  created at head on the spot, so a first start needs no extra step; anything else -- a
  database behind head, one made before migrations existed (no version table),
  or one stamped with a revision this modelseal does not know (made by a newer release) --
  is refused with a :class:`ConfigError` naming ``modelseal kbs migrate``.
* :func:`migrate` (``modelseal kbs migrate``): brings any database this code can read to
  head. A database made before migrations is first compared with revision 0001 (every
  table, column, type, nullability and index it has must match; tables that old code made
  lazily and that are missing are created) and stamped 0001; then the revisions after it run.

Atomicity: all of it -- the comparison, created tables, every revision and the version
stamp -- is ONE database transaction, so a crash (``kill -9``) or error at any point leaves
the database exactly as it was and a rerun starts over. PostgreSQL has transactional DDL.
SQLite does too, but Python's ``sqlite3`` driver commits implicitly before DDL unless it is
left in autocommit mode with the transaction begun explicitly, which is how every KBS
connection runs (``Database.write``: ``BEGIN IMMEDIATE`` under the writer lock), and Alembic
is told the DDL is transactional. Concurrent migrators (replicas or workers starting on an
empty database at once) are serialized: on SQLite by the writer lock and ``BEGIN
IMMEDIATE``, on PostgreSQL the transaction first takes an advisory lock; each re-reads the
revision after acquiring it, so the second finds the work done.
"""

from __future__ import annotations

import logging
import shlex
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext, RevisionStep
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection, MetaData, inspect, text
from sqlalchemy.exc import SQLAlchemyError

from modelseal.errors import BackendError, ConfigError
from modelseal.kbs.db import Database
from modelseal.kbs.migrations import VERSION_TABLE, baseline

__all__ = [
    "MIGRATIONS_DIR",
    "MigrationReport",
    "VERSION_TABLE",
    "SchemaStatus",
    "differences",
    "ensure_current",
    "head",
    "migrate",
    "migrate_command",
    "status",
]

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
#: PostgreSQL advisory lock key held by the migrating transaction: a fixed number that
#: every modelseal release uses, so migrators of all versions exclude each other.
_PG_LOCK_KEY = 0x2B0E_6F3A_91C4_5D17


@lru_cache(maxsize=1)
def scripts() -> ScriptDirectory:
    """The revisions shipped in this package (read once per process)."""
    return ScriptDirectory(str(MIGRATIONS_DIR))


def head() -> str:
    """The newest revision this code knows."""
    current = scripts().get_current_head()
    assert current is not None, "the package ships at least one revision"
    return current


def _known(revision: str) -> bool:
    return any(s.revision == revision for s in scripts().walk_revisions())


def migrate_command(data_dir: Path, database_url: str | None) -> str:
    """The command an operator runs to upgrade this database (never shows the URL itself,
    which may carry a password)."""
    command = f"modelseal kbs migrate --data-dir {shlex.quote(str(data_dir))}"
    return command + (" --database-url URL" if database_url else "")


@dataclass(frozen=True)
class SchemaStatus:
    """What a database holds: its revision (None if unstamped) and which KBS tables."""

    revision: str | None
    tables: frozenset[str]

    @property
    def empty(self) -> bool:
        return self.revision is None and not self.tables

    @property
    def current(self) -> bool:
        return self.revision == head()


def _context(conn: Connection, **opts: Any) -> MigrationContext:
    return MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE, **opts})


def _read_status(conn: Connection) -> SchemaStatus:
    heads = _context(conn).get_current_heads()
    if len(heads) > 1:
        raise ConfigError(f"the KBS database names several schema revisions {sorted(heads)}")
    known = set(baseline.metadata().tables)
    tables = frozenset(set(inspect(conn).get_table_names()) & known)
    return SchemaStatus(heads[0] if heads else None, tables)


def status(db: Database) -> SchemaStatus:
    """Read the database's revision and KBS tables (no lock, no writes), in one read
    transaction: two separate reads could see tables another process just committed but
    not the version stamp committed with them."""
    with db.read_connection() as conn:
        return _read_status(conn)


@contextmanager
def _migration_transaction(db: Database) -> Iterator[Connection]:
    """One transaction with transactional DDL, holding the migration lock (see module doc)."""
    try:
        if db.is_sqlite:
            # Database.write: BEGIN IMMEDIATE on a driver connection in autocommit mode (no
            # implicit COMMIT before DDL) under the writer lock every KBS process takes
            with db.write() as conn:
                yield conn
        else:
            with db.engine.begin() as conn:
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
                yield conn
    except SQLAlchemyError as exc:
        raise BackendError(f"database error while migrating: {type(exc).__name__}") from exc
    except CommandError as exc:
        raise ConfigError(f"schema migration failed: {exc}") from exc


def _upgrade(conn: Connection, applied: list[str]) -> None:
    """Run every revision after the stamped one, inside the caller's transaction."""
    script = scripts()

    def steps(heads: Sequence[str], _ctx: MigrationContext) -> list[RevisionStep]:
        # what alembic.command.upgrade passes too: the current heads (annotated as one str)
        return script._upgrade_revs("head", tuple(heads))  # type: ignore[arg-type]

    def record(*, step: Any, **_: Any) -> None:
        applied.extend(step.up_revision_ids)

    ctx = _context(conn, script=script, fn=steps, transactional_ddl=True, on_version_apply=[record])
    with Operations.context(ctx):
        ctx.run_migrations()


def _describe(diff: Any) -> str:
    """One line for an Alembic autogenerate difference, from the database's side (names
    and types only, never row data). Alembic words them as what to do to the database:
    ``add_*`` is missing there, ``remove_*`` is there but not expected."""
    if isinstance(diff, list):
        return "; ".join(_describe(d) for d in diff)
    kind: str = diff[0]
    verb, _, what = kind.partition("_")
    state = {"add": "missing", "remove": "unexpected"}.get(verb)
    if what == "table" and state:
        return f"table {diff[1].name} {state}"
    if what in ("index", "constraint") and state:
        return f"{what} {diff[1].name} on {diff[1].table.name} {state}"
    if what == "column" and state:
        return f"column {diff[2]}.{diff[3].name} {state}"
    if verb == "modify":
        return f"column {diff[2]}.{diff[3]} {what} is {diff[5]!s}, expected {diff[6]!s}"
    return kind


def differences(conn: Connection, metadata: MetaData) -> list[Any]:
    """Alembic's differences between the database and ``metadata``, restricted to the
    tables ``metadata`` holds (other tables sharing the database are not ours)."""

    def ours(name: str | None, type_: str, _parents: Any) -> bool:
        return type_ != "table" or name in metadata.tables

    ctx = _context(conn, include_name=ours, compare_type=True)
    return list(compare_metadata(ctx, metadata))


def _adopt(conn: Connection) -> tuple[str, ...]:
    """Recognise a database made before migrations as revision 0001 and stamp it.

    Every 0001 table it has must match exactly; the missing ones (old code created the
    RCAR session table only when the HTTP app started) are created, as that code would
    have at its next start. Returns the names of the tables created.
    """
    meta = baseline.metadata()
    missing: set[str] = set()
    problems: list[str] = []
    for diff in differences(conn, meta):
        if isinstance(diff, tuple) and diff[0] == "add_table":
            missing.add(diff[1].name)
        elif not (
            isinstance(diff, tuple) and diff[0] == "add_index" and diff[1].table.name in missing
        ):
            problems.append(_describe(diff))
    if problems:
        raise ConfigError(
            "the KBS tables in this database do not match the schema modelseal made before "
            "migrations existed, so it cannot be adopted as revision "
            f"{baseline.REVISION}: {'; '.join(problems[:20])}"
        )
    created = tuple(sorted(missing))
    if created:
        meta.create_all(conn, tables=[meta.tables[name] for name in created], checkfirst=False)
    _context(conn).stamp(scripts(), baseline.REVISION)
    return created


@dataclass(frozen=True)
class MigrationReport:
    """What :func:`migrate` did."""

    before: str | None
    after: str
    fresh: bool = False
    adopted: bool = False
    created_tables: tuple[str, ...] = ()
    applied: tuple[str, ...] = ()

    def lines(self) -> list[str]:
        """Human-readable summary, one line per fact."""
        out: list[str] = []
        if self.fresh:
            out.append(f"empty database: created the schema at revision {self.after}")
        elif self.adopted:
            out.append(
                "database made before schema migrations: its tables match revision "
                f"{baseline.REVISION}; stamped it {baseline.REVISION}"
            )
            if self.created_tables:
                out.append(f"created missing tables: {', '.join(self.created_tables)}")
        else:
            out.append(f"database was at revision {self.before}")
        if self.applied and not self.fresh:
            out.append(f"applied revisions: {', '.join(self.applied)}")
        if not (self.fresh or self.adopted or self.applied):
            out.append(f"already at head ({self.after}); nothing to do")
        else:
            out.append(f"now at revision {self.after} (head)")
        return out


def _refuse_unknown(revision: str) -> None:
    if not _known(revision):
        raise ConfigError(
            f"the KBS database is at schema revision {revision}, which this modelseal does "
            f"not know (its newest is {head()}): it was migrated by a newer release; run "
            "that release, or restore the backup taken before its migration"
        )


def migrate(db: Database) -> MigrationReport:
    """Bring the database to head in one locked transaction (see the module docstring)."""
    applied: list[str] = []
    with _migration_transaction(db) as conn:
        found = _read_status(conn)
        if found.revision is not None:
            _refuse_unknown(found.revision)
        created: tuple[str, ...] = ()
        adopted = found.revision is None and bool(found.tables)
        if adopted:
            created = _adopt(conn)
        _upgrade(conn, applied)
        after = _read_status(conn).revision
        if after != head():  # a revision chain that does not end at head: a packaging bug
            raise ConfigError(f"schema migration ended at revision {after}, not at {head()}")
    report = MigrationReport(
        before=found.revision,
        after=after,
        fresh=found.empty,
        adopted=adopted,
        created_tables=created,
        applied=tuple(applied),
    )
    for line in report.lines():
        log.info("schema: %s", line)
    return report


def ensure_current(db: Database, data_dir: Path, *, database_url: str | None) -> None:
    """Use a database at head, create an empty one at head, refuse anything else."""
    found = status(db)
    if found.empty:
        with _migration_transaction(db) as conn:
            found = _read_status(conn)  # another process may have created it meanwhile
            if found.empty:
                _upgrade(conn, [])
                log.info("schema: created an empty database at revision %s", head())
                return
    if found.current:
        return
    if found.revision is not None:
        _refuse_unknown(found.revision)
    command = migrate_command(data_dir, database_url)
    if found.revision is None:
        raise ConfigError(
            "the KBS database was made by a modelseal release from before schema "
            f"migrations; back it up, run `{command}` once, then start the KBS"
        )
    raise ConfigError(
        f"the KBS database is at schema revision {found.revision}, behind this release's "
        f"{head()}; back it up, run `{command}` once (before starting any replica of this "
        "release), then start the KBS"
    )
