"""RCAR sessions in the KBS database, so any replica can serve any step.

A session is created by ``/auth`` (state ``authed`` with its nonce) and consumed by the
first ``/attest``: one conditional ``UPDATE`` moves it to ``attested`` and stores the token,
so a second use of the nonce fails atomically even across replicas. Expired rows are
swept at most once a minute.

Each write is a *unit* (``modelseal.kbs.units``): a function of the connection of the
transaction it runs in. The served app hands the units to its runner (on SQLite, group
commit: several handshakes' writes share one transaction, each in a savepoint of its own);
the blocking methods here run each unit as a transaction of its own. Reads run in a
read-only transaction on a connection checked out for exactly that long.

Each replica also remembers the pending sessions it created (bounded, expiring) so the
common case -- ``/attest`` arriving at the replica that served ``/auth`` -- skips the read.
The remembered copy is only a hint: the conditional ``UPDATE`` stays the one authority on
whether the nonce is still unused.
"""

from __future__ import annotations

import logging
import re
import secrets
import threading
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Connection, Float, Index, String, Table, Text, delete, select
from sqlalchemy.orm import Mapped, mapped_column

from modelseal._internal.clock import Clock, SystemClock
from modelseal.errors import BackendError, TokenError
from modelseal.kbs.db import Base, Database
from modelseal.kbs.units import Unit, run_alone

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

    @staticmethod
    def _execute(conn: Connection, sql: str, params: dict[str, Any]) -> int:
        """One INSERT/UPDATE on the driver inside ``conn``'s transaction; the row count."""
        driver: Any = conn.connection.driver_connection
        # sqlite3 and psycopg connections both have ``execute`` returning a cursor
        return int(driver.execute(sql, params).rowcount)

    def _driver_sql(self, sql: str) -> str:
        """``:name`` placeholders in the driver's named style (sqlite3 ``:name``, psycopg
        ``%(name)s``)."""
        return sql if self.db.is_sqlite else re.sub(r":(\w+)", r"%(\1)s", sql)

    def create(self, tee: str, nonce: str) -> PendingSession:
        """Create and store a session (blocking: a transaction of its own)."""
        session = self.new(tee, nonce)
        run_alone(self.db, self.insert_unit(session))
        self.remember(session)
        if self.sweep_due():
            self.sweep()
        return session

    def new(self, tee: str, nonce: str) -> PendingSession:
        """A new session, not stored yet (no I/O): store it with :meth:`insert_unit`."""
        return PendingSession(secrets.token_hex(16), tee, nonce, self.clock.now() + self.ttl)

    def insert_unit(self, session: PendingSession) -> Unit[None]:
        """The unit that stores ``session`` in state ``authed``."""
        params = {
            "id": session.id,
            "tee": session.tee,
            "nonce": session.nonce,
            "state": AUTHED,
            "expires_at": session.expires_at,
        }

        def insert(conn: Connection) -> None:
            self._execute(conn, self._insert_sql, params)

        return insert

    def remember(self, session: PendingSession) -> None:
        """Keep a stored session in this replica's memory (see :meth:`remembered`)."""
        now = self.clock.now()
        with self._recent_lock:
            if len(self._recent) >= MAX_REMEMBERED:
                self._recent = {k: v for k, v in self._recent.items() if v.expires_at > now}
            if len(self._recent) < MAX_REMEMBERED:
                self._recent[session.id] = session

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
        """Consume the nonce and store the token (blocking: a transaction of its own)."""
        return run_alone(self.db, self.complete_unit(session, token, token_exp))

    def complete_unit(self, session: PendingSession, token: str, token_exp: float) -> Unit[float]:
        """The unit that consumes the nonce and stores the token, atomically; a lost race
        is a replay (TokenError, nothing written).

        It returns when the attested session expires: the token's expiry or the session
        TTL from now, whichever comes first.
        """
        now = self.clock.now()
        expiry = min(token_exp, now + self.ttl)
        params = {
            "attested": ATTESTED,
            "token": token,
            "new_expiry": expiry,
            "id": session.id,
            "authed": AUTHED,
            "nonce": session.nonce,
            "now": now,
        }

        def complete(conn: Connection) -> float:
            if self._execute(conn, self._complete_sql, params) != 1:
                raise TokenError("session nonce already used or expired")
            return expiry

        return complete

    def burn(self, session_id: str) -> None:
        """Make a session unusable (blocking: a transaction of its own)."""
        run_alone(self.db, self.burn_unit(session_id))

    def burn_unit(self, session_id: str) -> Unit[None]:
        """The unit that makes a session unusable after a failed attestation (its nonce is
        spent)."""
        with self._recent_lock:
            self._recent.pop(session_id, None)

        def burn(conn: Connection) -> None:
            conn.execute(delete(_T).where(_T.c.id == session_id))

        return burn

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

    def sweep_due(self) -> bool:
        """Whether expired sessions should be swept now (at most once a minute); the
        caller that gets True runs :meth:`sweep_unit` (or :meth:`sweep`)."""
        now = self.clock.now()
        with self._sweep_lock:
            if now - self._last_sweep < SWEEP_INTERVAL:
                return False
            self._last_sweep = now
            return True

    def sweep(self) -> None:
        """Delete expired sessions (blocking); a failure is logged and retried later."""
        try:
            run_alone(self.db, self.sweep_unit())
        except BackendError:
            log.warning("could not sweep expired RCAR sessions; will retry")

    def sweep_unit(self) -> Unit[None]:
        """The unit that deletes the sessions expired by now."""
        now = self.clock.now()

        def sweep(conn: Connection) -> None:
            conn.execute(delete(_T).where(_T.c.expires_at < now))

        return sweep
