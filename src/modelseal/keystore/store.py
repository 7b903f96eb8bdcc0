"""Key store: data keys wrapped under the KEK, with their model digest, policy and state.

Every DEK is wrapped by :class:`modelseal.crypto.kek.Kek` before it reaches SQL; the row
records the KEK id so a rotation can re-wrap all rows in one transaction and a KBS that
lacks the right KEK fails clearly instead of returning garbage. Policies are stored as
opaque canonical JSON here (the policy package validates them); this module never logs or
returns key bytes except through :meth:`KeyStore.load`.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from hashlib import sha256
from typing import Any, Literal, cast

from sqlalchemy import Connection, Engine, Row, Table, bindparam, func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from modelseal._internal.canonical import canonical_json
from modelseal._internal.clock import Clock, SystemClock
from modelseal.crypto.kek import Kek, KekRing
from modelseal.crypto.secret import SecretBytes
from modelseal.errors import BackendError, ConfigError, DecryptionError, KeyNotFound
from modelseal.keystore.paths import validate_key_id, validate_model_digest
from modelseal.keystore.tables import KeyRow, KeystoreBase

__all__ = [
    "ACTIVE",
    "DEK_SIZES",
    "REVOKED",
    "KeyConflict",
    "KeyRecord",
    "KeyStore",
    "LoadedKey",
    "StoredKey",
    "create_tables",
]

ACTIVE: Literal["active"] = "active"
REVOKED: Literal["revoked"] = "revoked"
#: Accepted DEK lengths: AES-128/192/256 (CNAP models may use shorter keys); generate = 32.
DEK_SIZES = (16, 24, 32)

Begin = Callable[[], AbstractContextManager[Session]]

_KEYS = cast(Table, KeyRow.__table__)
_SELECT_KEY = select(_KEYS).where(_KEYS.c.key_id == bindparam("key_id"))


class KeyConflict(ConfigError):
    """The key id exists with different bytes or model digest, or is revoked (HTTP 409)."""


@dataclass(frozen=True)
class KeyRecord:
    """Metadata of a stored key: everything except the key bytes."""

    key_id: str
    state: str
    kek_id: str
    size: int
    model_digest: str | None
    policy_digest: str | None
    created_at: float
    updated_at: float

    @classmethod
    def of(cls, row: KeyRow | Row[Any]) -> KeyRecord:
        return cls(
            key_id=row.key_id,
            state=row.state,
            kek_id=row.kek_id,
            size=row.size,
            model_digest=row.model_digest,
            policy_digest=row.policy_digest,
            created_at=row.created_at,
            updated_at=row.updated_at,
        )


@dataclass(frozen=True)
class LoadedKey:
    """A key read for release: its record, its DEK and its stored policy JSON (or None)."""

    record: KeyRecord
    dek: SecretBytes
    policy_json: str | None


@dataclass(frozen=True)
class StoredKey:
    """A key row read for a release decision: its metadata, the wrapped DEK left untouched.

    The metadata is not authenticated yet: a decision may deny on it (denying on a
    tampered row releases nothing), but only :meth:`KeyStore.unwrap` — which checks the
    row's MAC over these same values and the wrapped bytes — may lead to a release.
    """

    record: KeyRecord
    policy_json: str | None
    _row: Row[Any] = field(repr=False)


def create_tables(engine: Engine) -> None:
    """Create the key-store tables (idempotent), for using the store on its own (tests).

    A KBS never makes its schema this way: ``modelseal.kbs.schema`` creates and upgrades
    it through the migrations, which also record the schema revision.
    """
    try:
        KeystoreBase.metadata.create_all(engine)
    except SQLAlchemyError as exc:
        raise BackendError(f"database unavailable: {type(exc).__name__}") from exc


def check_dek(dek: SecretBytes) -> None:
    """Refuse lengths no AES key has, so a truncated import fails here, not at unseal."""
    if len(dek) not in DEK_SIZES:
        raise ConfigError(f"a data key must be 16, 24 or 32 bytes, not {len(dek)}")


class KeyStore:
    """CRUD on wrapped keys. ``begin`` opens one database transaction (``Database.begin``)."""

    def __init__(self, begin: Begin, ring: KekRing, *, clock: Clock | None = None) -> None:
        self._begin = begin
        self.ring = ring
        self._clock = clock or SystemClock()

    # --- reads -------------------------------------------------------------------------

    def get(self, key_id: str) -> KeyRecord:
        validate_key_id(key_id)
        with self._begin() as s:
            return KeyRecord.of(self._row(s, key_id))

    def list_keys(self, *, model_digest: str | None = None) -> list[KeyRecord]:
        with self._begin() as s:
            q = select(KeyRow).order_by(KeyRow.key_id)
            if model_digest is not None:
                q = q.where(KeyRow.model_digest == model_digest)
            return [KeyRecord.of(r) for r in s.scalars(q)]

    def get_policy(self, key_id: str) -> str | None:
        """The stored policy JSON, after the row's MAC check (a swapped policy is refused)."""
        validate_key_id(key_id)
        with self._begin() as s:
            row = self._row(s, key_id)
            _check_mac(self.ring.get(row.kek_id), row)
            return row.policy_json

    def load(self, key_id: str) -> LoadedKey:
        """Read and unwrap a key (any state; the caller enforces revocation)."""
        for attempt in (1, 2):
            try:
                with self._begin() as s:
                    stored = self.read_with(s.connection(), key_id)
                    return LoadedKey(stored.record, self.unwrap(stored), stored.policy_json)
            except ConfigError:
                # A rotation may have committed between our read and the ring swap.
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def read_with(self, conn: Connection, key_id: str) -> StoredKey:
        """A key's row inside the caller's transaction (one Core query, no ORM, no KEK).

        Nothing is authenticated or unwrapped here; raises KeyNotFound.
        """
        validate_key_id(key_id)
        row = conn.execute(_SELECT_KEY, {"key_id": key_id}).first()
        if row is None:
            raise KeyNotFound(f"no key {key_id}")
        return StoredKey(KeyRecord.of(row), row.policy_json, row)

    def unwrap(self, stored: StoredKey) -> SecretBytes:
        """Authenticate the row ``stored`` was read from (MAC) and unwrap its DEK.

        Raises DecryptionError (row failed its MAC or unwrap) or ConfigError (the row
        names a KEK this KBS does not hold, e.g. mid-rotation).
        """
        row = stored._row
        kek = self.ring.get(row.kek_id)
        _check_mac(kek, row)
        return self._unwrap(kek, row.key_id, row.wrapped)

    def count_by_kek(self) -> dict[str, int]:
        with self._begin() as s:
            rows = s.execute(select(KeyRow.kek_id, func.count()).group_by(KeyRow.kek_id))
            return {kek_id: int(n) for kek_id, n in rows}

    # --- writes ------------------------------------------------------------------------

    def put(
        self,
        key_id: str,
        dek: SecretBytes | None,
        *,
        model_digest: str | None = None,
        policy_json: str | None = None,
        policy_digest: str | None = None,
        wrap_with: Kek | None = None,
        session: Session | None = None,
    ) -> tuple[KeyRecord, bool]:
        """Store a new key (``dek`` None = generate 32 random bytes).

        Re-putting the same bytes is idempotent (safe retries of ``publish``); different
        bytes, a different model digest, a revoked id or ``generate`` on an existing id
        raise :class:`KeyConflict`. Returns the record and whether it was created.
        ``wrap_with`` is the KEK for a new row (default: the ring's active KEK);
        ``session`` runs the change inside the caller's transaction.
        """
        validate_key_id(key_id)
        if model_digest is not None:
            model_digest = validate_model_digest(model_digest)
        generated = dek is None
        if dek is None:
            dek = SecretBytes(secrets.token_bytes(32))
        check_dek(dek)
        now = self._clock.now()
        try:
            with self._tx(session) as s:
                row = s.get(KeyRow, key_id)
                if row is None:
                    kek = wrap_with or self.ring.active
                    row = KeyRow(
                        key_id=key_id,
                        wrapped=kek.wrap(key_id, dek),
                        kek_id=kek.id,
                        state=ACTIVE,
                        size=len(dek),
                        model_digest=model_digest,
                        policy_json=policy_json,
                        policy_digest=policy_digest,
                        created_at=now,
                        updated_at=now,
                    )
                    _seal(kek, row)
                    s.add(row)
                    s.flush()
                    return KeyRecord.of(row), True
                self._check_same(row, key_id, dek, generated, model_digest)
                if model_digest is not None:
                    row.model_digest = model_digest
                if policy_json is not None:
                    row.policy_json, row.policy_digest = policy_json, policy_digest
                row.updated_at = now
                _seal(self.ring.get(row.kek_id), row)
                s.flush()
                return KeyRecord.of(row), False
        finally:
            if generated:
                dek.wipe()

    def _check_same(
        self, row: KeyRow, key_id: str, dek: SecretBytes, generated: bool, model_digest: str | None
    ) -> None:
        if row.state != ACTIVE:
            raise KeyConflict(f"key {key_id} is {row.state}; delete it before reusing the id")
        if generated:
            raise KeyConflict(f"key {key_id} already exists")
        _check_mac(self.ring.get(row.kek_id), row)
        existing = self._unwrap(self.ring.get(row.kek_id), key_id, row.wrapped)
        try:
            if existing != dek:
                raise KeyConflict(f"key {key_id} already exists with different key bytes")
        finally:
            existing.wipe()
        if model_digest is not None and row.model_digest not in (None, model_digest):
            raise KeyConflict(f"key {key_id} is bound to a different model digest")

    def set_policy(
        self,
        key_id: str,
        policy_json: str | None,
        policy_digest: str | None,
        *,
        session: Session | None = None,
    ) -> KeyRecord:
        def change(row: KeyRow) -> None:
            row.policy_json, row.policy_digest = policy_json, policy_digest

        return self._update(key_id, change, session=session)

    def set_model_digest(
        self, key_id: str, model_digest: str | None, *, session: Session | None = None
    ) -> KeyRecord:
        if model_digest is not None:
            model_digest = validate_model_digest(model_digest)

        def change(row: KeyRow) -> None:
            row.model_digest = model_digest

        return self._update(key_id, change, session=session)

    def revoke(self, key_id: str, *, session: Session | None = None) -> KeyRecord:
        """Mark a key revoked: every later release is denied; the row stays for the audit.

        The row's MAC is not checked first: a row that fails it (tampered in SQL) must
        still be revocable, and revocation denies every release whatever the row says.
        """

        def change(row: KeyRow) -> None:
            row.state = REVOKED

        return self._update(key_id, change, session=session, check=False)

    def _update(
        self,
        key_id: str,
        change: Callable[[KeyRow], None],
        *,
        session: Session | None,
        check: bool = True,
    ) -> KeyRecord:
        """Apply ``change`` to an authenticated row, then re-MAC it under its KEK."""
        validate_key_id(key_id)
        with self._tx(session) as s:
            row = self._row(s, key_id)
            kek = self.ring.get(row.kek_id)
            if check:
                _check_mac(kek, row)
            change(row)
            row.updated_at = self._clock.now()
            _seal(kek, row)
            s.flush()
            return KeyRecord.of(row)

    def delete(self, key_id: str, *, session: Session | None = None) -> KeyRecord:
        validate_key_id(key_id)
        with self._tx(session) as s:
            row = self._row(s, key_id)
            record = KeyRecord.of(row)
            s.delete(row)
            s.flush()
            return record

    def rewrap_all(self, new: Kek, *, session: Session | None = None) -> int:
        """Re-wrap every key not already under ``new`` in ONE transaction.

        Sealed models are untouched (their DEKs do not change). Unwrapping uses whichever
        KEK of the ring each row names; if any row fails, nothing is committed.
        """
        count = 0
        with self._tx(session) as s:
            for row in s.scalars(select(KeyRow).where(KeyRow.kek_id != new.id)):
                old = self.ring.get(row.kek_id)
                _check_mac(old, row)
                dek = self._unwrap(old, row.key_id, row.wrapped)
                try:
                    row.wrapped = new.wrap(row.key_id, dek)
                finally:
                    dek.wipe()
                row.kek_id = new.id
                _seal(new, row)
                count += 1
            s.flush()
        return count

    # --- helpers -----------------------------------------------------------------------

    @contextmanager
    def _tx(self, session: Session | None) -> Iterator[Session]:
        """The caller's transaction if given, else a new one."""
        if session is not None:
            yield session
        else:
            with self._begin() as s:
                yield s

    @staticmethod
    def _row(s: Session, key_id: str) -> KeyRow:
        row = s.get(KeyRow, key_id)
        if row is None:
            raise KeyNotFound(f"no key {key_id}")
        return row

    @staticmethod
    def _unwrap(kek: Kek, key_id: str, wrapped: bytes) -> SecretBytes:
        try:
            return kek.unwrap(key_id, wrapped)
        except DecryptionError:
            raise DecryptionError(f"stored key {key_id} failed to unwrap under {kek.id}") from None


_ROW_MAC = "key-row"


def _row_mac(kek: Kek, row: KeyRow | Row[Any]) -> str:
    body = {
        "key_id": row.key_id,
        "kek_id": row.kek_id,
        "state": row.state,
        "size": row.size,
        "model_digest": row.model_digest,
        "policy_digest": row.policy_digest,
        "policy_sha256": sha256(row.policy_json.encode()).hexdigest() if row.policy_json else None,
        "wrapped_sha256": sha256(row.wrapped).hexdigest(),
    }
    return kek.mac(_ROW_MAC, canonical_json(body)).hex()


def _seal(kek: Kek, row: KeyRow) -> None:
    row.mac = _row_mac(kek, row)


def _check_mac(kek: Kek, row: KeyRow | Row[Any]) -> None:
    if not hmac.compare_digest(row.mac or "", _row_mac(kek, row)):
        raise DecryptionError(f"stored record of key {row.key_id} failed authentication")
