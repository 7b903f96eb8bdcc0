"""RCAR sessions in the KBS database, so any replica can serve any step.

A session is created by ``/auth`` (state ``authed`` with its nonce) and consumed by the
first ``/attest``: one conditional ``UPDATE`` moves it to ``attested`` and stores the token,
so a second use of the nonce fails atomically even across replicas. Expired rows are
swept at most once a minute.

Every statement runs in a transaction of its own on a connection checked out for exactly
that long (``Database.write`` / ``Database.read_connection``); the calls block, so the app
runs them off the event loop.

Each replica also remembers the pending sessions it created (bounded, expiring) so the
common case -- ``/attest`` arriving at the replica that served ``/auth`` -- skips the read.
The remembered copy is only a hint: the conditional ``UPDATE`` stays the one authority on
whether the nonce is still unused.
"""

from __future__ import annotations

import logging
import re
import threading
import uuid
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Float, Index, String, Table, Text, delete, select
from sqlalchemy.orm import Mapped, mapped_column

from modelseal._internal.clock import Clock, SystemClock
from modelseal.errors import BackendError, TokenError
from modelseal.kbs.db import Base, Database

log = logging.getLogger(__name__)

AUTHED = "authed"
ATTESTED = "attested"
SWEEP_INTERVAL = 60.0
#: Pending sessions remembered per replica (about 200 bytes each).
MAX_REMEMBERED = 100_000


class RcarSession(Base):
    """One RCAR handshake: the challenge nonce, then the issued token."""

    __tablename__ = "kbs_rcar_sessions"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tee: Mapped[str] = mapped_column(String(64))
    nonce: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))
    expires_at: Mapped[float] = mapped_column(Float)
    token: Mapped[str | None] = mapped_column(Text, nullable=True)

    __table_args__ = (Index("ix_kbs_rcar_sessions_expires_at", "expires_at"),)


_T = cast(Table, RcarSession.__table__)


@dataclass(frozen=True)
class PendingSession:
    id: str
    tee: str
    nonce: str
    expires_at: float


class SessionStore:
    """Create, consume and look up sessions with single-statement transactions."""

    def __init__(self, db: Database, *, ttl: float, clock: Clock | None = None) -> None:
        self.db = db
        self.ttl = ttl
        self.clock: Clock = clock or SystemClock()
        self._last_sweep = 0.0
        self._sweep_lock = threading.Lock()
        self._recent: dict[str, PendingSession] = {}
        self._recent_lock = threading.Lock()
        # The two statements of every handshake go straight to the driver: building and
        # caching SQLAlchemy constructs costs more than the database takes to run them.
        self._insert_sql = self._driver_sql(
            "INSERT INTO kbs_rcar_sessions (id, tee, nonce, state, expires_at, token) "
            "VALUES (:id, :tee, :nonce, :state, :expires_at, NULL)"
        )
        self._complete_sql = self._driver_sql(
            "UPDATE kbs_rcar_sessions SET state = :attested, token = :token, "
            "expires_at = :new_expiry "
            "WHERE id = :id AND state = :authed AND nonce = :nonce AND expires_at > :now"
        )

    def _write(self, sql: str, params: dict[str, Any]) -> int:
        """Run one INSERT/UPDATE in its own transaction; returns the affected row count."""
        with self.db.write_driver() as conn:
            # sqlite3 and psycopg connections both have ``execute`` returning a cursor
            cursor = conn.execute(sql, params)
            return int(cursor.rowcount)

    def _driver_sql(self, sql: str) -> str:
        """``:name`` placeholders in the driver's named style (sqlite3 ``:name``, psycopg
        ``%(name)s``)."""
        return sql if self.db.is_sqlite else re.sub(r":(\w+)", r"%(\1)s", sql)

    def create(self, tee: str, nonce: str) -> PendingSession:
        now = self.clock.now()
        session = PendingSession(uuid.uuid4().hex, tee, nonce, now + self.ttl)
        self._write(
            self._insert_sql,
            {
                "id": session.id,
                "tee": tee,
                "nonce": nonce,
                "state": AUTHED,
                "expires_at": session.expires_at,
            },
        )
        with self._recent_lock:
            if len(self._recent) >= MAX_REMEMBERED:
                self._recent = {k: v for k, v in self._recent.items() if v.expires_at > now}
            if len(self._recent) < MAX_REMEMBERED:
                self._recent[session.id] = session
        self._maybe_sweep(now)
        return session

    def remembered(self, session_id: str) -> PendingSession | None:
        """The pending session if this replica created it (no I/O: safe on the event loop),
        None if it must be read from the database with :meth:`pending`; TokenError if
        expired. Taking it out is harmless: the conditional ``UPDATE`` of :meth:`complete`
        still decides whether the nonce is unused."""
        with self._recent_lock:
            remembered = self._recent.pop(session_id, None)
        if remembered is not None and remembered.expires_at <= self.clock.now():
            raise TokenError("session expired")
        return remembered

    def pending(self, session_id: str) -> PendingSession:
        """The unconsumed, unexpired session ``session_id``, or TokenError."""
        remembered = self.remembered(session_id)
        if remembered is not None:
            return remembered
        with self.db.read_connection() as conn:
            row = conn.execute(
                select(_T.c.tee, _T.c.nonce, _T.c.state, _T.c.expires_at).where(
                    _T.c.id == session_id
                )
            ).first()
        if row is None:
            raise TokenError("session not found")
        if row.state != AUTHED:
            raise TokenError("session nonce already used")
        if row.expires_at <= self.clock.now():
            raise TokenError("session expired")
        return PendingSession(session_id, row.tee, row.nonce, row.expires_at)

    def complete(self, session: PendingSession, token: str, token_exp: float) -> float:
        """Consume the nonce and store the token, atomically; a lost race is a replay.

        Returns when the attested session expires: the token's expiry or the session TTL
        from now, whichever comes first.
        """
        now = self.clock.now()
        expiry = min(token_exp, now + self.ttl)
        updated = self._write(
            self._complete_sql,
            {
                "attested": ATTESTED,
                "token": token,
                "new_expiry": expiry,
                "id": session.id,
                "authed": AUTHED,
                "nonce": session.nonce,
                "now": now,
            },
        )
        if updated != 1:
            raise TokenError("session nonce already used or expired")
        return expiry

    def burn(self, session_id: str) -> None:
        """Make a session unusable after a failed attestation (its nonce is spent)."""
        with self._recent_lock:
            self._recent.pop(session_id, None)
        with self.db.write() as conn:
            conn.execute(delete(_T).where(_T.c.id == session_id))

    def token_for(self, session_id: str) -> str:
        """The token of an attested, unexpired session (cookie path), or TokenError."""
        with self.db.read_connection() as conn:
            row = conn.execute(
                select(_T.c.state, _T.c.expires_at, _T.c.token).where(_T.c.id == session_id)
            ).first()
        if row is None or row.state != ATTESTED or row.token is None:
            raise TokenError("session not found or not attested")
        if row.expires_at <= self.clock.now():
            raise TokenError("session expired")
        return str(row.token)

    def _maybe_sweep(self, now: float) -> None:
        if now - self._last_sweep < SWEEP_INTERVAL or not self._sweep_lock.acquire(blocking=False):
            return
        try:
            self._last_sweep = now
            with self.db.write() as conn:
                conn.execute(delete(_T).where(_T.c.expires_at < now))
        except BackendError:
            log.warning("could not sweep expired RCAR sessions; will retry")
        finally:
            self._sweep_lock.release()
