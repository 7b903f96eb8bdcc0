"""RCAR sessions in the database: single use, TTL, shared by two stores (two replicas)."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelseal._internal.clock import FixedClock
from modelseal.errors import TokenError
from modelseal.kbs.db import Database, sqlite_url
from modelseal.kbs.sessions import SessionStore


@pytest.fixture
def db(tmp_path: Path) -> Database:
    database = Database(sqlite_url(tmp_path))
    database.create_all()
    return database


def test_create_pending_complete(db: Database) -> None:
    clock = FixedClock()
    store = SessionStore(db, ttl=60, clock=clock)
    s = store.create("sample", "nonce")
    assert len(s.id) == 32
    assert store.pending(s.id).nonce == "nonce"
    store.complete(s, "tok", clock.now() + 300)
    assert store.token_for(s.id) == "tok"
    with pytest.raises(TokenError, match="already used"):
        store.pending(s.id)
    with pytest.raises(TokenError):
        store.complete(s, "tok2", clock.now() + 300)


def test_second_replica_sees_and_races(db: Database, tmp_path: Path) -> None:
    clock = FixedClock()
    a = SessionStore(db, ttl=60, clock=clock)
    b = SessionStore(Database(sqlite_url(tmp_path)), ttl=60, clock=clock)
    s = a.create("sample", "n")
    pending = b.pending(s.id)
    a.complete(s, "t", clock.now() + 60)
    with pytest.raises(TokenError):
        b.complete(pending, "t2", clock.now() + 60)
    assert b.token_for(s.id) == "t"


def test_expiry(db: Database) -> None:
    clock = FixedClock()
    store = SessionStore(db, ttl=60, clock=clock)
    s = store.create("sample", "n")
    clock.advance(61)
    with pytest.raises(TokenError, match="expired"):
        store.pending(s.id)
    with pytest.raises(TokenError):
        store.complete(s, "t", clock.now() + 60)
    s2 = store.create("sample", "n2")
    store.complete(s2, "t", clock.now() + 30)  # token shorter than session: cookie ends with it
    clock.advance(31)
    with pytest.raises(TokenError, match="expired"):
        store.token_for(s2.id)


def test_burn_and_unknown(db: Database) -> None:
    store = SessionStore(db, ttl=60, clock=FixedClock())
    s = store.create("sample", "n")
    store.burn(s.id)
    with pytest.raises(TokenError, match="not found"):
        store.pending(s.id)
    with pytest.raises(TokenError):
        store.token_for("0" * 32)


def test_sweep_removes_expired_rows(db: Database) -> None:
    from sqlalchemy import text

    clock = FixedClock()
    store = SessionStore(db, ttl=10, clock=clock)
    store.create("sample", "old")
    clock.advance(100)
    store.create("sample", "new")
    with db.engine.connect() as conn:
        nonces = [r[0] for r in conn.execute(text("SELECT nonce FROM kbs_rcar_sessions"))]
    assert nonces == ["new"]
