"""SQLAlchemy engine and declarative base shared by every KBS table.

One code path for SQLite (the embedded default, WAL mode) and PostgreSQL (N stateless
replicas). Modules that own tables subclass :class:`Base`; :meth:`Database.create_all`
creates whatever tables have been imported.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from modelseal.errors import BackendError, ConfigError


class Base(DeclarativeBase):
    """Declarative base of all KBS tables."""


def sqlite_url(data_dir: Path) -> str:
    """URL of the embedded SQLite database inside ``data_dir``."""
    return f"sqlite:///{(data_dir / 'kbs.sqlite3').resolve()}"


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


class Database:
    """An engine plus a session factory; ``begin()`` is one transaction."""

    def __init__(self, url: str) -> None:
        if url.startswith("postgres://"):
            url = "postgresql+psycopg://" + url[len("postgres://") :]
        elif url.startswith("postgresql://"):
            url = "postgresql+psycopg://" + url[len("postgresql://") :]
        if not (url.startswith("sqlite:") or url.startswith("postgresql+psycopg:")):
            raise ConfigError("database URL must be sqlite:///PATH or postgresql://...")
        try:
            if url.startswith("sqlite:"):
                self.engine: Engine = create_engine(
                    url, connect_args={"check_same_thread": False, "timeout": 10}
                )
                event.listen(self.engine, "connect", _sqlite_pragmas)
            else:
                self.engine = create_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True)
        except (SQLAlchemyError, ImportError) as exc:
            raise ConfigError(f"cannot use database URL: {type(exc).__name__}") from exc
        self.url = url
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def is_sqlite(self) -> bool:
        return self.url.startswith("sqlite:")

    def create_all(self) -> None:
        """Create every table whose module has been imported (idempotent)."""
        try:
            Base.metadata.create_all(self.engine)
        except SQLAlchemyError as exc:
            raise BackendError(f"database unavailable: {type(exc).__name__}") from exc

    @contextmanager
    def begin(self) -> Iterator[Session]:
        """One transaction: commit on success, roll back on error.

        Storage failures surface as :class:`BackendError` (HTTP 503) with the original
        exception chained, never as a raw driver error.
        """
        session = self._sessions()
        try:
            with session.begin():
                yield session
        except SQLAlchemyError as exc:
            raise BackendError(f"database error: {type(exc).__name__}") from exc
        finally:
            session.close()

    def dispose(self) -> None:
        self.engine.dispose()
