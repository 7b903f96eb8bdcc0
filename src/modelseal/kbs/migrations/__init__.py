"""Alembic migrations of the KBS database (applied by :mod:`modelseal.kbs.schema`).

``versions/`` holds one module per schema revision, each with ``revision``,
``down_revision`` and ``upgrade()``; :mod:`modelseal.kbs.schema` runs them with Alembic's
programmatic API (no ``alembic.ini`` or ``env.py``), so they ship inside the wheel as
ordinary package modules.

Adding a revision when a model changes: copy the newest module in ``versions/`` to
``vNNNN_<what>.py`` with ``revision = "NNNN"`` and ``down_revision`` = the previous one, and
write ``upgrade()`` with ``alembic.op`` operations. On SQLite, column changes go through
``op.batch_alter_table`` (SQLite cannot ALTER most column properties; batch mode copies the
table inside the same transaction). Migrations are forward-only: an operator who must go
back restores the backup taken before ``modelseal kbs migrate``. The test
``tests/integration/kbs_admin/test_migrations.py::test_head_matches_the_models`` fails,
listing the differences, until the models and the head revision agree; also set
:data:`HEAD` below to the new revision (a test checks it against Alembic's head).
"""

from __future__ import annotations

from sqlalchemy import Connection, column, inspect, select, table

__all__ = ["HEAD", "VERSION_TABLE", "stamped_at_head"]

#: The newest revision in ``versions/``, so that a start on a current database can tell
#: without loading Alembic (about a fifth of a KBS process's import time).
HEAD = "0002"
#: Where the revision is recorded: not Alembic's default ``alembic_version``, so a KBS can
#: share a PostgreSQL database (schema) with another Alembic-managed application.
VERSION_TABLE = "ms_schema_version"


def stamped_at_head(conn: Connection) -> bool:
    """True when the database names exactly :data:`HEAD` (the usual start); anything else,
    including no version table, is for :func:`modelseal.kbs.schema.ensure_current` to
    judge with Alembic."""
    if not inspect(conn).has_table(VERSION_TABLE):
        return False
    version = table(VERSION_TABLE, column("version_num"))
    rows = conn.execute(select(version.c.version_num)).fetchmany(2)
    return len(rows) == 1 and rows[0][0] == HEAD
