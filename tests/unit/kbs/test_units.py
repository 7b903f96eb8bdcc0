"""Group commit of units of work: atomic per unit, answered only after the commit."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
from sqlalchemy import Connection, text

from modelseal.errors import BackendError, TokenError
from modelseal.kbs.db import Database, sqlite_url
from modelseal.kbs.units import GroupCommit, run_alone


@pytest.fixture
def db(tmp_path: Path) -> Database:
    database = Database(sqlite_url(tmp_path))
    with database.write() as conn:
        conn.execute(text("CREATE TABLE t (v INTEGER PRIMARY KEY)"))
        conn.execute(text("CREATE TABLE parent (id INTEGER PRIMARY KEY)"))
        conn.execute(
            text(
                "CREATE TABLE child (pid INTEGER REFERENCES parent(id) "
                "DEFERRABLE INITIALLY DEFERRED)"
            )
        )
    return database


def _values(db: Database) -> list[int]:
    with db.read_connection() as conn:
        return [int(r[0]) for r in conn.execute(text("SELECT v FROM t ORDER BY v"))]


def _insert(v: int) -> object:
    def unit(conn: Connection) -> int:
        conn.execute(text("INSERT INTO t (v) VALUES (:v)"), {"v": v})
        return v

    return unit


class _Secret:
    """A result that owns a secret: wiped if it is never delivered."""

    def __init__(self) -> None:
        self.discarded = False

    def discard(self) -> None:
        self.discarded = True


async def _batch(group: GroupCommit, units: list[object]) -> list[object]:
    """Run ``units`` as one batch: a first unit holds the writer until all are queued."""
    queued = threading.Event()

    def gate(conn: Connection) -> None:
        assert queued.wait(10)

    first = asyncio.ensure_future(group.run(gate))
    await asyncio.sleep(0.05)  # the writer thread is inside ``gate`` now
    rest = [asyncio.ensure_future(group.run(u)) for u in units]  # type: ignore[arg-type]
    await asyncio.sleep(0)  # every unit is in the queue
    queued.set()
    await first
    return list(await asyncio.gather(*rest, return_exceptions=True))


def test_failing_unit_is_rolled_back_alone(db: Database) -> None:
    group = GroupCommit(db)

    def insert_then_fail(conn: Connection) -> None:
        conn.execute(text("INSERT INTO t (v) VALUES (2)"))
        raise TokenError("replayed nonce")

    results = asyncio.run(_batch(group, [_insert(1), insert_then_fail, _insert(3)]))
    group.close()
    assert results[0] == 1
    assert results[2] == 3
    assert isinstance(results[1], TokenError)
    assert _values(db) == [1, 3]


def test_database_error_in_a_unit_is_a_backend_error(db: Database) -> None:
    group = GroupCommit(db)
    results = asyncio.run(_batch(group, [_insert(1), _insert(1), _insert(2)]))
    group.close()
    assert results[0] == 1
    assert results[2] == 2
    assert isinstance(results[1], BackendError)  # duplicate key: that unit only
    assert _values(db) == [1, 2]


def test_failed_commit_fails_every_unit_and_discards_results(db: Database) -> None:
    group = GroupCommit(db)
    secret = _Secret()

    def holds_secret(conn: Connection) -> _Secret:
        conn.execute(text("INSERT INTO t (v) VALUES (5)"))
        return secret

    def breaks_commit(conn: Connection) -> None:
        # a deferred foreign key: the statement passes, the COMMIT fails
        conn.execute(text("INSERT INTO child (pid) VALUES (42)"))

    results = asyncio.run(_batch(group, [holds_secret, breaks_commit]))
    group.close()
    assert all(isinstance(r, BackendError) for r in results)
    assert secret.discarded
    assert _values(db) == []


def test_result_only_after_commit(db: Database, tmp_path: Path) -> None:
    """When a unit's result arrives, another connection already reads its write."""
    group = GroupCommit(db)
    other = Database(sqlite_url(tmp_path))

    async def main() -> list[int]:
        seen = []
        for v in range(5):
            await group.run(_insert(v))  # type: ignore[arg-type]
            seen.append(len(_values(other)))
        return seen

    assert asyncio.run(main()) == [1, 2, 3, 4, 5]
    group.close()


def test_run_alone_discards_when_the_commit_fails(db: Database) -> None:
    secret = _Secret()

    def unit(conn: Connection) -> _Secret:
        conn.execute(text("INSERT INTO child (pid) VALUES (7)"))
        return secret

    with pytest.raises(BackendError):
        run_alone(db, unit)
    assert secret.discarded


def test_units_run_in_the_callers_context(db: Database) -> None:
    """A unit runs on the writer thread (SQLite) or in the pool (PostgreSQL), yet sees the
    request's context: what it logs carries that request's id."""
    from concurrent.futures import ThreadPoolExecutor

    from modelseal._internal.logs import REQUEST_ID
    from modelseal.kbs.units import PooledUnits

    def seen(conn: Connection) -> tuple[str | None, str]:
        return REQUEST_ID.get(), threading.current_thread().name

    async def request(runner: GroupCommit | PooledUnits, rid: str) -> tuple[str | None, str]:
        REQUEST_ID.set(rid)
        return await runner.run(seen)

    async def main() -> list[tuple[str | None, str]]:
        group = GroupCommit(db)
        with ThreadPoolExecutor(2, thread_name_prefix="pool") as pool:
            pooled = PooledUnits(db, pool)
            try:
                return list(
                    await asyncio.gather(
                        request(group, "req-a"), request(group, "req-b"), request(pooled, "req-c")
                    )
                )
            finally:
                group.close()

    results = asyncio.run(main())
    assert [rid for rid, _ in results] == ["req-a", "req-b", "req-c"]
    assert all(thread != threading.main_thread().name for _, thread in results)
