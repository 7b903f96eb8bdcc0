"""Units of work of the RCAR hot path, committed together on SQLite (group commit).

A *unit* is a function of one database connection that does one indivisible piece of work
(insert a session, consume a nonce, decide a release and append its audit row) and returns
its result; it must do nothing but database work and pure computation, and must not start
transactions of its own. Callers hand units to a runner and get the result once the unit's
writes are committed, never before.

- :class:`GroupCommit` (SQLite): one writer thread per process takes every unit queued
  while it was busy and runs them in ONE write transaction (writer lock, ``BEGIN
  IMMEDIATE``), each inside a ``SAVEPOINT`` of its own, so a unit that raises is rolled
  back alone and the others still commit. The awaiting requests are answered after the
  ``COMMIT`` returned, in one hand-off per event loop. Under load, a release's three writes
  cost a fraction of a commit each, the writer lock is taken once per batch instead of
  once per write, and the threads of one worker no longer queue on it.
- :class:`PooledUnits` (PostgreSQL): every unit is a transaction of its own in the thread
  pool; replicas order themselves on the audit head's row lock.

Either way a connection belongs to one transaction at a time and no database call runs on
the event loop thread.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, Protocol, TypeVar

from sqlalchemy import Connection
from sqlalchemy.exc import SQLAlchemyError

from modelseal.errors import BackendError
from modelseal.kbs.db import Database

__all__ = ["GroupCommit", "PooledUnits", "Unit", "UnitRunner", "unit_runner"]

log = logging.getLogger(__name__)

T = TypeVar("T")
Unit = Callable[[Connection], T]

#: Most units one transaction takes: bounds how long an admin write waits for the lock.
MAX_BATCH = 64


class UnitRunner(Protocol):
    async def run(self, unit: Unit[T]) -> T:
        """The unit's result once its writes are committed (its exception otherwise)."""
        ...


def discard(value: object) -> None:
    """Let a result that holds secrets (a released DEK) wipe them: it was committed but
    will never be delivered (the batch's commit failed, or the request went away)."""
    wipe = getattr(value, "discard", None)
    if callable(wipe):
        wipe()


def _deliver(done: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    """On the event loop: complete the futures of one batch."""
    for fut, ok, value in done:
        if fut.cancelled():
            if ok:
                discard(value)
        elif ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)


class _Item:
    __slots__ = ("fut", "loop", "unit")

    def __init__(self, unit: Unit[Any], loop: asyncio.AbstractEventLoop) -> None:
        self.unit = unit
        self.loop = loop
        self.fut: asyncio.Future[Any] = loop.create_future()


class GroupCommit:
    """SQLite: units queued from any event loop, committed in batches by one thread.

    Units submitted during one pass of an event loop reach the writer thread together, at
    the end of that pass: waking a sleeping thread is a system call that cost more CPU per
    unit than the unit's SQL (measured with py-spy under 32 clients).
    """

    def __init__(self, db: Database, *, max_batch: int = MAX_BATCH) -> None:
        self._db = db
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[list[_Item] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        # per event loop: the units submitted in its current pass, handed over by _flush
        self._pending: dict[asyncio.AbstractEventLoop, list[_Item]] = {}

    async def run(self, unit: Unit[T]) -> T:
        loop = asyncio.get_running_loop()
        item = _Item(in_context(unit), loop)
        if self._thread is None:
            self._start()
        pending = self._pending.get(loop)
        if pending is None:
            self._pending[loop] = [item]
            loop.call_soon(self._flush, loop)
        else:
            pending.append(item)
        result: T = await item.fut
        return result

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        """On ``loop``: hand this pass's units to the writer thread (one wake-up)."""
        self._queue.put(self._pending.pop(loop))

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._writer, name="kbs-group-commit", daemon=True
                )
                self._thread.start()

    def close(self) -> None:
        """Stop the writer thread after the units already queued."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def _writer(self) -> None:
        backlog: list[_Item] = []
        stop = False
        while not stop or backlog:
            if not backlog:
                first = self._queue.get()
                if first is None:
                    return
                backlog = first
            while len(backlog) < self._max_batch and not stop:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                else:
                    backlog.extend(more)
            batch, backlog = backlog[: self._max_batch], backlog[self._max_batch :]
            self._commit(batch)

    def _commit(self, batch: list[_Item]) -> None:
        results: list[tuple[bool, Any]] = []
        try:
            with self._db.write() as conn:
                driver: Any = conn.connection.driver_connection
                for item in batch:
                    results.append(self._one(driver, conn, item.unit))
        except Exception as exc:  # the transaction as a whole failed: nothing is committed
            failure = exc if isinstance(exc, BackendError) else BackendError("database error")
            log.warning("group commit of %d units failed: %s", len(batch), failure)
            for ok, value in results:
                if ok:
                    discard(value)
            results = [(False, failure)] * len(batch)
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]]
        by_loop = {}
        for item, (ok, value) in zip(batch, results, strict=True):
            by_loop.setdefault(item.loop, []).append((item.fut, ok, value))
        for loop, done in by_loop.items():
            try:
                loop.call_soon_threadsafe(_deliver, done)
            except RuntimeError:  # that loop is closed: nobody waits for these results
                for _fut, ok, value in done:
                    if ok:
                        discard(value)

    @staticmethod
    def _one(driver: Any, conn: Connection, unit: Unit[Any]) -> tuple[bool, Any]:
        """Run one unit inside a savepoint: its writes stay only if it returns."""
        driver.execute("SAVEPOINT unit")
        try:
            value = unit(conn)
        except Exception as exc:
            # Undo this unit only; a failure to do so fails the whole transaction.
            driver.execute("ROLLBACK TO unit")
            driver.execute("RELEASE unit")
            if isinstance(exc, SQLAlchemyError | driver_error(conn)):
                exc = BackendError(f"database error: {type(exc).__name__}")
            return False, exc
        driver.execute("RELEASE unit")
        return True, value


def in_context(unit: Unit[T]) -> Unit[T]:
    """``unit`` run in a copy of the caller's context (on whichever thread runs it), so what
    it logs carries the caller's request id."""
    context = contextvars.copy_context()

    def run(conn: Connection) -> T:
        return context.run(unit, conn)

    return run


def driver_error(conn: Connection) -> type[Exception]:
    """The DBAPI's base error class (a raw driver statement raises it, not SQLAlchemy's)."""
    error: type[Exception] = conn.dialect.loaded_dbapi.Error
    return error


class PooledUnits:
    """PostgreSQL: each unit in a transaction of its own, in the thread pool."""

    def __init__(self, db: Database, pool: Executor) -> None:
        self._db = db
        self._pool = pool

    async def run(self, unit: Unit[T]) -> T:
        loop = asyncio.get_running_loop()
        result: T = await loop.run_in_executor(self._pool, run_alone, self._db, in_context(unit))
        return result


def run_alone(db: Database, unit: Unit[T]) -> T:
    """Run ``unit`` as a transaction of its own (blocking; never on the event loop)."""
    value: Any = None
    done = False
    try:
        with db.write() as conn:
            try:
                value = unit(conn)
            except driver_error(conn) as exc:
                raise BackendError(f"database error: {type(exc).__name__}") from exc
            done = True
    except BaseException:
        if done:  # the commit failed after the unit returned
            discard(value)
        raise
    result: T = value
    return result


def unit_runner(db: Database, pool: Executor) -> UnitRunner:
    """Group commit on SQLite, a transaction per unit on PostgreSQL."""
    return GroupCommit(db) if db.is_sqlite else PooledUnits(db, pool)
