"""SQLAlchemy engine, declarative base and the KBS transaction model.

One code path for SQLite (the embedded default, WAL mode) and PostgreSQL (N stateless
replicas). Modules that own tables subclass :class:`Base`.

Transactions (``docs/concepts/transactions.md``): every unit of work runs in ONE
transaction on a pooled connection that it holds for exactly that long, checked out by the
context managers below and never shared between concurrent requests.

- :meth:`Database.begin` / :meth:`Database.write`: a transaction that may write. On SQLite
  it first takes this process's writer lock (first come, first served) and then an
  exclusive ``flock`` on ``kbs.sqlite3.writer-lock`` shared by every process on the data
  directory, and opens with ``BEGIN IMMEDIATE``. Writers therefore queue instead of spinning
  in SQLite's busy handler, which let a steady stream of short release transactions starve
  an admin write for the whole busy timeout. On PostgreSQL it is a plain transaction; the
  audit head's row lock (``AuditLog.lock``) orders the writers.
- :meth:`Database.read` / :meth:`Database.read_connection`: a read-only transaction (WAL
  readers never wait for the writer).
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Session

from modelseal.errors import BackendError, ConfigError

__all__ = ["Base", "Database", "sqlite_url"]


class Base(DeclarativeBase):
    """Declarative base of all KBS tables."""


def sqlite_url(data_dir: Path) -> str:
    """URL of the embedded SQLite database inside ``data_dir``."""
    return f"sqlite:///{(data_dir / 'kbs.sqlite3').resolve()}"


def _sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
    # The driver must not open transactions by itself: the "begin" hook below does, so a
    # writer can say BEGIN IMMEDIATE (SQLAlchemy's documented pysqlite recipe).
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    # NORMAL: a commit survives the process being killed (the WAL is in the page cache);
    # admin writes of key material raise it to FULL for themselves (see ``durable``).
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _sqlite_begin(conn: Connection, mode: str) -> None:
    """Open the SQLite transaction on the driver (which runs in autocommit mode here), so a
    writer can say ``BEGIN IMMEDIATE``. Done by hand instead of in SQLAlchemy's "begin" event
    hook: any engine-level event listener makes SQLAlchemy dispatch events around every
    statement (measured: +1,000 Python calls per key release)."""
    driver = conn.connection.driver_connection
    assert driver is not None
    driver.execute(f"BEGIN {mode}")


class _FairLock:
    """A first-come, first-served lock: a waiting admin write is never overtaken forever.

    ``threading.Lock`` lets the releasing thread take the lock straight back, so a thread
    that writes in a loop can keep another waiting indefinitely. Here a releasing holder
    hands the lock directly to the oldest waiter, each of which blocks on a lock of its own
    (no wake-up of every waiter, which cost ~15 % of a busy KBS's CPU with a Condition).
    """

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._waiters: deque[threading.Lock] = deque()
        self._held = False

    def acquire(self) -> None:
        with self._mutex:
            if not self._held:
                self._held = True
                return
            gate = threading.Lock()
            gate.acquire()
            self._waiters.append(gate)
        gate.acquire()  # released by the holder handing over; _held stays True

    def release(self) -> None:
        with self._mutex:
            if self._waiters:
                self._waiters.popleft().release()
            else:
                self._held = False


class _SqliteWriter:
    """The writer lock of one SQLite database: in-process fair lock + cross-process flock.

    The flock is taken on a side file (never on the database itself, whose locks belong to
    SQLite) and is released by the kernel if the process dies, so a ``kill -9`` never
    leaves the database locked.
    """

    def __init__(self, db_path: Path) -> None:
        self._path = db_path.with_name(db_path.name + ".writer-lock")
        self._local = _FairLock()
        self._fd: int | None = None
        self._pid = -1

    @contextmanager
    def held(self) -> Iterator[None]:
        self._local.acquire()
        try:
            fd = self._open()
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            self._local.release()

    def _open(self) -> int:
        # Opened lazily and once per process; a forked worker opens its own (its pid differs)
        # because flock locks belong to the open file description, shared across fork.
        if self._fd is None or self._pid != os.getpid():
            try:
                self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError as exc:
                raise BackendError(f"database lock unavailable: {exc.strerror}") from None
            self._pid = os.getpid()
        return self._fd


def _driver_pragma(conn: Connection, pragma: str) -> None:
    """A SQLite PRAGMA outside any transaction (on the driver connection, which runs in
    autocommit mode here), e.g. to change ``synchronous`` for one transaction."""
    driver = conn.connection.driver_connection
    assert driver is not None
    driver.execute(f"PRAGMA {pragma}")


class Database:
    """An engine plus the transaction context managers every KBS module uses."""

    def __init__(self, url: str) -> None:
        if url.startswith("postgres://"):
            url = "postgresql+psycopg://" + url[len("postgres://") :]
        elif url.startswith("postgresql://"):
            url = "postgresql+psycopg://" + url[len("postgresql://") :]
        if not (url.startswith("sqlite:") or url.startswith("postgresql+psycopg:")):
            raise ConfigError("database URL must be sqlite:///PATH or postgresql://...")
        self._writer: _SqliteWriter | None = None
        try:
            if url.startswith("sqlite:"):
                self.engine: Engine = create_engine(
                    url, connect_args={"check_same_thread": False, "timeout": 10}
                )
                event.listen(self.engine, "connect", _sqlite_connect)
                database = self.engine.url.database
                if database and database != ":memory:":
                    self._writer = _SqliteWriter(Path(database))
            else:
                self.engine = create_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True)
        except (SQLAlchemyError, ImportError) as exc:
            raise ConfigError(f"cannot use database URL: {type(exc).__name__}") from exc
        self.url = url
        # SQLite without a file (tests' :memory:) still serializes this process's writers.
        self._memory_lock = _FairLock()

    @property
    def is_sqlite(self) -> bool:
        return self.url.startswith("sqlite:")

    def create_all(self) -> None:
        """Create every table whose module has been imported (idempotent)."""
        try:
            with self._writer_held():
                Base.metadata.create_all(self.engine)
        except SQLAlchemyError as exc:
            raise BackendError(f"database unavailable: {type(exc).__name__}") from exc

    @contextmanager
    def _writer_held(self) -> Iterator[None]:
        if self._writer is not None:
            with self._writer.held():
                yield
        elif self.is_sqlite:
            self._memory_lock.acquire()
            try:
                yield
            finally:
                self._memory_lock.release()
        else:
            yield

    @contextmanager
    def begin(self, *, durable: bool = False) -> Iterator[Session]:
        """One ORM transaction that may write: commit on success, roll back on error.

        ``durable`` makes the commit survive power loss too (SQLite ``synchronous=FULL``
        for this transaction): used for key material, not for the hot release path.
        Storage failures surface as :class:`BackendError` (HTTP 503) with the original
        exception chained, never as a raw driver error.
        """
        with self._writer_held(), self._guard(), self.engine.connect() as conn:
            full = durable and self.is_sqlite
            if full:
                _driver_pragma(conn, "synchronous=FULL")
            try:
                with (
                    self._transaction(conn, "IMMEDIATE"),
                    Session(bind=conn, expire_on_commit=False) as session,
                ):
                    yield session
                    session.flush()
            finally:
                if full:
                    _driver_pragma(conn, "synchronous=NORMAL")

    @contextmanager
    def read(self) -> Iterator[Session]:
        """One read-only ORM transaction (no writer lock)."""
        with (
            self._guard(),
            self.engine.connect() as conn,
            self._transaction(conn, "DEFERRED"),
            Session(bind=conn, expire_on_commit=False) as session,
        ):
            yield session

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """One Core transaction that may write (the hot release path skips the ORM)."""
        with (
            self._writer_held(),
            self._guard(),
            self.engine.connect() as conn,
            self._transaction(conn, "IMMEDIATE"),
        ):
            yield conn

    @contextmanager
    def read_connection(self) -> Iterator[Connection]:
        """One read-only Core transaction (no writer lock)."""
        with self._guard(), self.engine.connect() as conn, self._transaction(conn, "DEFERRED"):
            yield conn

    @contextmanager
    def _transaction(self, conn: Connection, sqlite_mode: str) -> Iterator[None]:
        """``conn``'s transaction: SQLAlchemy commits or rolls back; on SQLite the driver
        first opens it in ``sqlite_mode`` (SQLAlchemy's own begin is a no-op there)."""
        if self.is_sqlite:
            _sqlite_begin(conn, sqlite_mode)
        with conn.begin():
            yield

    @staticmethod
    @contextmanager
    def _guard() -> Iterator[None]:
        try:
            yield
        except SQLAlchemyError as exc:
            raise BackendError(f"database error: {type(exc).__name__}") from exc

    def dispose(self) -> None:
        self.engine.dispose()
