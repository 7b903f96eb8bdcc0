"""Append-only, hash-chained audit log of every key decision and admin action.

Each row stores ``prev_hash`` (the previous row's hash; 64 zeros for row 1) and
``row_hash = SHA-256(RFC 8785 JSON of the row's fields including prev_hash)``. Editing,
deleting, reordering or inserting a row breaks the chain at that row. Because anyone with
database access could recompute a plain hash chain after an edit, the head of the chain
(last seq and hash) is additionally MACed with a key derived from the KEK: rewriting the
chain, truncating its tail or appending forged rows is detected unless the KEK is also
stolen.

Appends are serialized inside one transaction that first *writes* the head row (a write
lock on SQLite, a row lock on PostgreSQL), so concurrent writers - threads, processes or
KBS replicas - never fork the chain.
"""

from __future__ import annotations

import dataclasses
import hmac
import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import (
    Connection,
    Integer,
    Row,
    String,
    Table,
    Text,
    bindparam,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError as SqlIntegrityError
from sqlalchemy.orm import Mapped, mapped_column

from modelseal._internal.clock import Clock, SystemClock
from modelseal.crypto.kek import Kek, KekRing
from modelseal.errors import BackendError, ConfigError
from modelseal.kbs.db import Base, Database
from modelseal.protocol.admin import AUDIT_GENESIS, audit_row_hash, check_audit_row

__all__ = [
    "GENESIS",
    "AuditEntry",
    "AuditLog",
    "AuditVerification",
    "core_transaction",
]

GENESIS = AUDIT_GENESIS
_HEAD_ID = 1
_MAC_LABEL = "audit-head"
_MAX_REASONS = 32
_MAX_TEXT = 1024


class AuditRow(Base):
    __tablename__ = "ms_audit"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    time: Mapped[str] = mapped_column(String(40))
    actor: Mapped[str] = mapped_column(String(255))
    action: Mapped[str] = mapped_column(String(64))
    key_id: Mapped[str | None] = mapped_column(String(255), index=True)
    tee: Mapped[str | None] = mapped_column(String(32))
    claims_digest: Mapped[str | None] = mapped_column(String(80))
    policy_digest: Mapped[str | None] = mapped_column(String(80))
    decision: Mapped[str] = mapped_column(String(16))
    reasons: Mapped[str] = mapped_column(Text)
    prev_hash: Mapped[str] = mapped_column(String(64))
    row_hash: Mapped[str] = mapped_column(String(64))


class AuditHead(Base):
    """The chain head: last seq and hash, MACed under the KEK named by ``kek_id``."""

    __tablename__ = "ms_audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(Integer)
    row_hash: Mapped[str] = mapped_column(String(64))
    kek_id: Mapped[str] = mapped_column(String(64))
    mac: Mapped[str] = mapped_column(String(64))


_HEADS = cast(Table, AuditHead.__table__)
_ROWS = cast(Table, AuditRow.__table__)
_LOCK_HEAD = (
    update(_HEADS)
    .where(_HEADS.c.id == _HEAD_ID)
    .values(seq=_HEADS.c.seq)
    .returning(_HEADS.c.seq, _HEADS.c.row_hash, _HEADS.c.kek_id, _HEADS.c.mac)
)
_READ_HEAD = select(_HEADS.c.seq, _HEADS.c.row_hash, _HEADS.c.kek_id, _HEADS.c.mac).where(
    _HEADS.c.id == _HEAD_ID
)
_READ_HEAD_KEK = select(_HEADS.c.kek_id).where(_HEADS.c.id == _HEAD_ID)
_WRITE_HEAD = (
    update(_HEADS)
    .where(_HEADS.c.id == _HEAD_ID)
    .values(
        seq=bindparam("seq"),
        row_hash=bindparam("row_hash"),
        kek_id=bindparam("kek_id"),
        mac=bindparam("mac"),
    )
)
_INSERT_ROW = insert(_ROWS)


@contextmanager
def core_transaction(db: Database) -> Iterator[Connection]:
    """One Core-level write transaction (the hot release path skips the ORM's bookkeeping)."""
    with db.write() as conn:
        yield conn


@dataclass(frozen=True)
class AuditEntry:
    seq: int
    time: str
    actor: str
    action: str
    key_id: str | None
    tee: str | None
    claims_digest: str | None
    policy_digest: str | None
    decision: str
    reasons: tuple[str, ...]
    prev_hash: str
    row_hash: str

    @classmethod
    def of(cls, row: AuditRow | Row[Any]) -> AuditEntry:
        fields = _fields(row)
        return cls(**{**fields, "reasons": tuple(fields["reasons"])}, row_hash=row.row_hash)

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "reasons": list(self.reasons)}


@dataclass(frozen=True)
class AuditVerification:
    """Result of :meth:`AuditLog.verify`: ``first_bad_seq`` names the first broken row."""

    ok: bool
    rows: int
    first_bad_seq: int | None = None
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _fields(row: AuditRow | Row[Any]) -> dict[str, Any]:
    return {
        "seq": row.seq,
        "time": row.time,
        "actor": row.actor,
        "action": row.action,
        "key_id": row.key_id,
        "tee": row.tee,
        "claims_digest": row.claims_digest,
        "policy_digest": row.policy_digest,
        "decision": row.decision,
        "reasons": list(_load_reasons(row.reasons)),
        "prev_hash": row.prev_hash,
    }


def _load_reasons(text: str) -> tuple[str, ...]:
    try:
        value = json.loads(text)
    except ValueError:
        return ("<unparseable reasons>",)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return ("<unparseable reasons>",)
    return tuple(value)


def _clip(text: str | None) -> str | None:
    if text is None:
        return None
    return text if len(text) <= _MAX_TEXT else text[: _MAX_TEXT - 3] + "..."


def _utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class AuditLog:
    """The audit log on the KBS database. ``ring`` supplies the KEK for the head MAC."""

    def __init__(
        self, db: Database, ring: Callable[[], KekRing], *, clock: Clock | None = None
    ) -> None:
        self._db = db
        self._ring = ring
        self._clock = clock or SystemClock()

    def _head_mac(self, kek_ring: KekRing, kek_id: str, seq: int, last: str) -> str:
        return kek_ring.get(kek_id).mac(_MAC_LABEL, f"{seq}:{last}".encode()).hex()

    def init_head(self) -> None:
        """Create the head row of an empty log (idempotent; safe when replicas race)."""
        ring = self._ring()
        try:
            with self._db.begin() as s:
                if s.get(AuditHead, _HEAD_ID) is not None:
                    return
                kek = ring.active
                s.add(
                    AuditHead(
                        id=_HEAD_ID,
                        seq=0,
                        row_hash=GENESIS,
                        kek_id=kek.id,
                        mac=self._head_mac(ring, kek.id, 0, GENESIS),
                    )
                )
        except BackendError as exc:
            if not isinstance(exc.__cause__, SqlIntegrityError):
                raise

    def head_kek_id(self) -> str | None:
        """Id of the KEK that MACed the head (None before :meth:`init_head`)."""
        with self._db.read() as s:
            head = s.get(AuditHead, _HEAD_ID)
            return None if head is None else head.kek_id

    def record(
        self,
        *,
        actor: str,
        action: str,
        key_id: str | None,
        tee: str | None,
        claims_digest: str | None,
        policy_digest: str | None,
        decision: str,
        reasons: Sequence[str],
    ) -> AuditEntry:
        """Append one row in its own transaction.

        Raises BackendError if the head was tampered with or storage fails.
        """
        with core_transaction(self._db) as conn:
            head = self.lock(conn)
            return self.append(
                conn,
                head=head,
                actor=actor,
                action=action,
                key_id=key_id,
                tee=tee,
                claims_digest=claims_digest,
                policy_digest=policy_digest,
                decision=decision,
                reasons=reasons,
            )

    @staticmethod
    def lock(conn: Connection) -> Row[Any] | None:
        """Take the append lock: a write to the head row, before anything is read.

        On SQLite this acquires the database write lock (waiting up to busy_timeout); on
        PostgreSQL a row lock. Call it first in any transaction that will :meth:`append`.
        Returns the head row as locked (``UPDATE ... RETURNING``, one statement), which
        :meth:`append` may take as ``head=`` when nothing wrote the head in between.
        """
        return conn.execute(_LOCK_HEAD).first()

    def head_kek_id_in(self, conn: Connection) -> str | None:
        """The audit head's KEK id as ``conn``'s transaction sees it."""
        value = conn.execute(_READ_HEAD_KEK).scalar()
        return None if value is None else str(value)

    def current_kek(self, conn: Connection) -> Kek:
        """The deployment's current KEK: the one named by the audit head (after :meth:`lock`).

        Writers wrap new keys under it, so a worker that has not yet seen a rotation
        done by another process still writes under the new KEK (loaded from disk).
        """
        kek_id = conn.execute(_READ_HEAD_KEK).scalar()
        if kek_id is None:
            raise BackendError("audit log is not initialized")
        try:
            return self._ring().get(kek_id)
        except ConfigError:
            # Another replica rotated the KEK and this one has not been given the new
            # ``kek`` file yet: a server-side condition that clears when it arrives (503),
            # not a fault of the request.
            raise BackendError(
                f"this KBS does not hold the deployment's current KEK {kek_id}; "
                "install the rotated kek file on every replica"
            ) from None

    def append(
        self,
        conn: Connection,
        *,
        actor: str,
        action: str,
        key_id: str | None,
        tee: str | None,
        claims_digest: str | None,
        policy_digest: str | None,
        decision: str,
        reasons: Sequence[str],
        rekey: Kek | None = None,
        head: Row[Any] | None = None,
    ) -> AuditEntry:
        """Append one row inside the caller's transaction (after :meth:`lock`).

        The new head is MACed under the KEK that MACed the old one - the head names the
        current KEK of the whole deployment - except when ``rekey`` (a KEK rotation in
        this same transaction) moves it to a new KEK. ``head`` is what :meth:`lock`
        returned in this transaction (saves re-reading it); without it the head is read.
        """
        ring = self._ring()
        if head is None:
            head = cast("Row[Any] | None", conn.execute(_READ_HEAD).first())
        if head is None:
            raise BackendError("audit log is not initialized")
        try:
            head_kek = ring.get(head.kek_id)
        except ConfigError:
            # Another replica rotated the KEK and this one lacks the new file: say so (503),
            # rather than calling an intact log tampered.
            raise BackendError(
                f"this KBS does not hold the deployment's current KEK {head.kek_id}; "
                "install the rotated kek file on every replica"
            ) from None
        head_ok = hmac.compare_digest(
            head.mac, head_kek.mac(_MAC_LABEL, f"{head.seq}:{head.row_hash}".encode()).hex()
        )
        if not head_ok:
            raise BackendError(
                "audit log head failed verification; refusing to extend a tampered "
                "log (run `modelseal kbs audit --verify`)"
            )
        clipped = [r[:_MAX_TEXT] for r in list(reasons)[:_MAX_REASONS]]
        fields: dict[str, Any] = {
            "seq": head.seq + 1,
            "time": _utc(self._clock.now()),
            "actor": _clip(actor) or "",
            "action": action[:64],
            "key_id": key_id,
            "tee": tee,
            "claims_digest": claims_digest,
            "policy_digest": policy_digest,
            "decision": decision[:16],
            "reasons": clipped,
            "prev_hash": head.row_hash,
        }
        digest = audit_row_hash(fields)
        stored = {**fields, "reasons": json.dumps(clipped, ensure_ascii=False), "row_hash": digest}
        conn.execute(_INSERT_ROW, stored)
        kek = rekey or head_kek
        conn.execute(
            _WRITE_HEAD,
            {
                "seq": fields["seq"],
                "row_hash": digest,
                "kek_id": kek.id,
                "mac": kek.mac(_MAC_LABEL, f"{fields['seq']}:{digest}".encode()).hex(),
            },
        )
        return AuditEntry(
            **{**fields, "reasons": tuple(clipped)},
            row_hash=digest,
        )

    def entries(self, *, after: int = 0, limit: int = 100) -> list[AuditEntry]:
        """Rows with ``seq > after`` in order, at most ``limit`` (1..1000)."""
        limit = max(1, min(limit, 1000))
        q = select(_ROWS).where(_ROWS.c.seq > after).order_by(_ROWS.c.seq).limit(limit)
        with self._db.read_connection() as conn:
            return [AuditEntry.of(r) for r in conn.execute(q)]

    def _iter_rows(self, upto: int, batch: int = 1000) -> Iterator[Row[Any]]:
        after = 0
        while True:
            q = (
                select(_ROWS)
                .where(_ROWS.c.seq > after, _ROWS.c.seq <= upto)
                .order_by(_ROWS.c.seq)
                .limit(batch)
            )
            with self._db.read_connection() as conn:
                rows = list(conn.execute(q))
            yield from rows
            if len(rows) < batch:
                return
            after = rows[-1].seq

    def verify(self) -> AuditVerification:
        """Walk the chain up to the MACed head; report the first bad seq.

        Runs without blocking appends: the highest seq is read *before* the head, so a
        legitimate concurrent append can only make the head newer, never older; rows
        above the head therefore mean rows added outside the KBS.
        """
        ring = self._ring()
        with self._db.read() as s:
            max_seq = s.scalar(select(func.max(AuditRow.seq))) or 0
            head = s.get(AuditHead, _HEAD_ID)
            if head is None:
                return AuditVerification(False, 0, 1, "the audit head row is missing")
            h_seq, h_hash, h_kek, h_mac = head.seq, head.row_hash, head.kek_id, head.mac
        prev, expected, count = GENESIS, 1, 0
        for row in self._iter_rows(h_seq):
            bad = check_audit_row(_fields(row), row.row_hash, expected, prev)
            if bad is not None:
                return AuditVerification(False, count, *bad)
            prev, expected, count = row.row_hash, expected + 1, count + 1
        last = expected - 1
        if max_seq > h_seq:
            return AuditVerification(
                False, count, h_seq + 1, f"row {h_seq + 1} was appended outside the KBS"
            )
        if last < h_seq:
            return AuditVerification(
                False, count, last + 1, f"row {last + 1} is missing (the log was truncated)"
            )
        try:
            mac_ok = hmac.compare_digest(h_mac, self._head_mac(ring, h_kek, h_seq, h_hash))
        except ConfigError:
            mac_ok = False
        if h_hash != prev or not mac_ok:
            return AuditVerification(
                False, count, max(last, 1), "the audit head does not authenticate the last row"
            )
        return AuditVerification(True, count)
