"""Key administration on the KBS: the key store plus policies, audit rows and KEK rotation.

Every admin operation and its audit row (actor = the token's subject) are ONE transaction
that starts by taking the audit append lock, so admin writes, releases and rotations of
all processes sharing the database are serialized. New keys are wrapped under the KEK
named by the audit head (the deployment's current KEK), which only a rotation changes.

KEK rotation is crash-safe: the new KEK is first written to ``kek.next`` (fsynced); all
rows are re-wrapped and the audit head moves to the new KEK in one transaction; only then
does ``kek.next`` replace ``kek``. A KBS that starts with a ``kek.next`` present finishes
the interrupted rotation before serving. The whole sequence holds an exclusive ``flock`` on
``kek.lock`` in the data directory, so two processes never rotate at once and one never
removes the ``kek.next`` another is committing rows under. Other processes on the same
data directory pick the new KEK up from disk the first time they meet it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, select
from sqlalchemy import delete as sa_delete
from sqlalchemy.orm import Session

from modelseal._internal.bounded import load_json
from modelseal.crypto.kek import (
    KEK_SIZE,
    Kek,
    KekRing,
    SoftwareKek,
    create_secret_file,
    fsync_dir,
    read_secret_file,
)
from modelseal.crypto.secret import SecretBytes
from modelseal.errors import DecryptionError, FormatError
from modelseal.kbs.audit import AuditLog
from modelseal.kbs.db import Database
from modelseal.kbs.ita_tables import ItaKeyRow
from modelseal.kbs.kek_stores import KEK_LOCK_FILE, KekSources, KekStore, data_dir_lock
from modelseal.keystore.store import KeyRecord, KeyStore
from modelseal.keystore.tables import KeyRow
from modelseal.policy.document import MAX_POLICY_BYTES, ReleasePolicy, parse_policy

__all__ = [
    "KEK_FILE",
    "KEK_LOCK_FILE",
    "KEK_NEXT_FILE",
    "KekFiles",
    "KeyService",
    "RotationResult",
    "stored_policy",
]

log = logging.getLogger(__name__)

KEK_FILE = "kek"
KEK_NEXT_FILE = "kek.next"


class KekFiles:
    """The KEK file (``kek``) and, during a rotation, its successor (``kek.next``)."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / KEK_FILE
        self.next_path = data_dir / KEK_NEXT_FILE
        self.lock_path = data_dir / KEK_LOCK_FILE

    def describe(self) -> str:
        return str(self.path)

    def rotation_lock(self) -> contextlib.AbstractContextManager[None]:
        return data_dir_lock(self.lock_path)

    def has_active(self) -> bool:
        return self.path.exists() or self.path.is_symlink()

    def recover(self) -> None:
        """Nothing to do: promoting ``kek.next`` is one atomic rename."""

    def ensure(self) -> bool:
        """Generate the KEK once; True when this call created it."""
        created = create_secret_file(self.path, size=KEK_SIZE)
        if created:
            log.info("generated a new KEK at %s", self.path)
        return created

    def load(self) -> Kek:
        return SoftwareKek(read_secret_file(self.path, size=KEK_SIZE, what="KEK"))

    def discard_next(self, new: Kek) -> None:
        if self.has_active() and self.load().id == new.id:
            return
        self.next_path.unlink(missing_ok=True)

    def retire_active(self) -> None:
        """Delete ``kek`` (its rows moved to another store); the bytes are gone with it."""
        self.path.unlink(missing_ok=True)
        fsync_dir(self.path.parent)

    def load_next(self) -> Kek | None:
        if not (self.next_path.exists() or self.next_path.is_symlink()):
            return None
        return SoftwareKek(read_secret_file(self.next_path, size=KEK_SIZE, what="next KEK"))

    def create_next(self) -> Kek:
        """Write ``kek.next`` (or reuse one left by a crashed rotation, so it can finish)."""
        create_secret_file(self.next_path, size=KEK_SIZE)
        nxt = self.load_next()
        assert nxt is not None
        return nxt

    def on_disk(self) -> list[Kek]:
        """``kek`` and, mid-rotation, ``kek.next``: what a :class:`KekRing` reloads on a miss."""
        keks = [self.load()] if self.has_active() else []
        nxt = self.load_next()
        if nxt is not None:
            keks.append(nxt)
        return keks

    def promote_next(self, new: Kek) -> None:
        """Atomically make ``kek.next`` the KEK; the old KEK bytes are gone afterwards.

        Idempotent: if another process already promoted it, ``kek`` is checked to be ``new``.
        """
        try:
            os.replace(self.next_path, self.path)
        except FileNotFoundError:
            if self.load().id != new.id:
                raise
            return
        fsync_dir(self.path.parent)


@dataclass(frozen=True)
class RotationResult:
    old_kek_id: str
    new_kek_id: str
    rewrapped: int


class KeyService:
    """Admin-facing key operations; each one is a transaction with its audit row."""

    def __init__(self, db: Database, store: KeyStore, audit: AuditLog, kek_files: KekStore) -> None:
        self._db = db
        self.store = store
        self._audit = audit
        self._kek_files = kek_files
        # In-process guard around KEK rotation (the database lock covers other processes).
        self._rotation_lock = threading.Lock()

    def ring(self, active: Kek, *others: Kek) -> KekRing:
        """A KEK ring that reloads the data directory's KEK files on a miss."""
        return KekRing(active, others, reload=self._kek_files.on_disk)

    # --- queries -----------------------------------------------------------------------

    def get(self, key_id: str) -> KeyRecord:
        return self.store.get(key_id)

    def list_keys(self, *, model_digest: str | None = None) -> list[KeyRecord]:
        return self.store.list_keys(model_digest=model_digest)

    def get_policy(self, key_id: str) -> ReleasePolicy | None:
        """The key's validated policy, or None when none is set (releases are denied)."""
        text = self.store.get_policy(key_id)
        return None if text is None else stored_policy(text)

    # --- changes -----------------------------------------------------------------------

    @contextlib.contextmanager
    def _audited(self) -> Iterator[tuple[Session, Connection]]:
        """One transaction holding the audit append lock (taken before anything is read)."""
        with self._db.begin(durable=True) as s:
            conn = s.connection()
            self._audit.lock(conn)
            yield s, conn

    def audited(self) -> contextlib.AbstractContextManager[tuple[Session, Connection]]:
        """The same serialized, durable transaction for admin writes kept outside the key
        table (Intel Trust Authority key-transfer policies); record them with
        :meth:`record`."""
        return self._audited()

    def record(
        self,
        conn: Connection,
        actor: str,
        action: str,
        key_id: str | None,
        *,
        policy_digest: str | None = None,
        reasons: list[str] | None = None,
        rekey: Kek | None = None,
    ) -> None:
        """Append the audit row of an admin write made in :meth:`audited`."""
        self._audit.append(
            conn,
            actor=actor,
            action=action,
            key_id=key_id,
            tee=None,
            claims_digest=None,
            policy_digest=policy_digest,
            decision="ok",
            reasons=reasons or [],
            rekey=rekey,
        )

    def put(
        self,
        key_id: str,
        dek: SecretBytes | None,
        *,
        policy: ReleasePolicy | Mapping[str, Any] | None = None,
        model_digest: str | None = None,
        actor: str,
        within: Callable[[Session, KeyRecord], None] | None = None,
        generated: bool = False,
    ) -> tuple[KeyRecord, bool]:
        """Import ``dek`` (or generate one when None) with an optional policy and digest.

        ``generated``: the caller made ``dek`` from the CSPRNG itself (a size the store
        does not generate), so the audit row says ``key.generate``, not ``key.import``.

        ``within`` runs inside the same transaction once the key row is written, so rows
        that belong with the key (an ITA key's policy reference) commit or fail with it.
        """
        parsed = None if policy is None else _parse(policy)
        with self._audited() as (s, conn):
            record, created = self.store.put(
                key_id,
                dek,
                model_digest=model_digest,
                policy_json=None if parsed is None else parsed.canonical().decode(),
                policy_digest=None if parsed is None else parsed.digest,
                wrap_with=self._audit.current_kek(conn),
                session=s,
            )
            if within is not None:
                within(s, record)
            action = "key.generate" if dek is None or generated else "key.import"
            self.record(
                conn,
                actor,
                action if created else "key.put-existing",
                key_id,
                policy_digest=record.policy_digest,
                reasons=[f"model_digest={record.model_digest}"] if record.model_digest else [],
            )
        return record, created

    def set_policy(
        self,
        key_id: str,
        policy: ReleasePolicy | Mapping[str, Any],
        *,
        actor: str,
        within: Callable[[Session], None] | None = None,
    ) -> ReleasePolicy:
        """Replace the key's policy; ``within`` runs in the same transaction after it."""
        parsed = _parse(policy)
        with self._audited() as (s, conn):
            self.store.set_policy(key_id, parsed.canonical().decode(), parsed.digest, session=s)
            if within is not None:
                within(s)
            self.record(conn, actor, "policy.set", key_id, policy_digest=parsed.digest)
        return parsed

    def clear_policy(self, key_id: str, *, actor: str) -> KeyRecord:
        with self._audited() as (s, conn):
            record = self.store.set_policy(key_id, None, None, session=s)
            self.record(conn, actor, "policy.clear", key_id)
        return record

    def set_model_digest(self, key_id: str, model_digest: str | None, *, actor: str) -> KeyRecord:
        with self._audited() as (s, conn):
            record = self.store.set_model_digest(key_id, model_digest, session=s)
            self.record(
                conn, actor, "model.bind", key_id, reasons=[f"model_digest={record.model_digest}"]
            )
        return record

    def revoke(self, key_id: str, *, actor: str) -> KeyRecord:
        with self._audited() as (s, conn):
            record = self.store.revoke(key_id, session=s)
            self.record(conn, actor, "key.revoke", key_id, policy_digest=record.policy_digest)
        return record

    def delete(self, key_id: str, *, actor: str) -> KeyRecord:
        """Delete the key, and with it the key's Intel Trust Authority reference if it was
        made through ``POST /kbs/v1/keys``, whichever API deletes it: a reference left
        behind would make a key put later under the same id an ITA key again, with the
        algorithm, length and policy of the deleted one."""
        with self._audited() as (s, conn):
            record = self.store.delete(key_id, session=s)
            s.execute(sa_delete(ItaKeyRow).where(ItaKeyRow.key_id == key_id))
            self.record(conn, actor, "key.delete", key_id)
        return record

    def rotate_kek(self, *, actor: str) -> RotationResult:
        """Generate a new KEK, re-wrap every key under it in one transaction, retire the old.

        Sealed models are not touched (their DEKs are unchanged). KBS replicas on other
        machines must get the new ``kek`` file; until then they fail closed.
        """
        with self._rotation_lock, self._kek_files.rotation_lock():
            before = self.store.ring
            new = self._kek_files.create_next()
            try:
                return self._rotate(new, actor, [])
            except BaseException:
                # Forget the new KEK only when the database provably names it nowhere (a
                # rotation refused on, e.g., a tampered row), so the next start does not
                # "finish" it. If the commit's outcome is unknown (the database went away
                # mid-commit) ``kek.next`` stays: it may be the only copy of the KEK that
                # wraps every key, and the next start completes the rotation.
                if not self._references(new):
                    self.store.ring = before
                    self._kek_files.discard_next(new)
                raise

    def _references(self, kek: Kek) -> bool:
        """True unless the database is readable and names ``kek`` in no key row and not
        in the audit head."""
        try:
            # under the audit append lock: a rotation into this same KEK by another process
            # (a replica on another machine sharing the token) holds that lock until it
            # commits, so this waits for it and then sees its rows instead of a snapshot
            # from before them
            with self._audited() as (_s, conn):
                named = conn.execute(
                    select(KeyRow.kek_id).where(KeyRow.kek_id == kek.id).limit(1)
                ).first()
                return named is not None or self._audit.head_kek_id_in(conn) == kek.id
        except Exception:  # unreadable: assume it does, keep the KEK
            log.warning("could not check whether KEK %s is in use; keeping kek.next", kek.id)
            return True

    def finish_interrupted_rotation(self) -> RotationResult | None:
        """If ``kek.next`` exists (a rotation crashed), complete it before serving."""
        with self._rotation_lock, self._kek_files.rotation_lock():
            new = self._kek_files.load_next()
            if new is None:
                return None
            result = self._rotate(new, "kbs", ["resumed at start-up"])
            log.warning("finished an interrupted KEK rotation: %s", result.new_kek_id)
            return result

    def _rotate(self, new: Kek, actor: str, notes: list[str]) -> RotationResult:
        old = self.store.ring.active
        self.store.ring = self.ring(new, *self.store.ring)
        with self._audited() as (s, conn):
            previous = self._audit.current_kek(conn)
            count = self.store.rewrap_all(new, session=s)
            s.flush()
            self.record(
                conn,
                actor,
                "kek.rotate",
                None,
                reasons=[f"{previous.id} -> {new.id}", f"rewrapped={count}", *notes],
                rekey=new,
            )
        self._kek_files.promote_next(new)
        self.store.ring = self.ring(new)
        if isinstance(self._kek_files, KekSources):
            self._kek_files.retire_previous(self._references)
        log.warning("KEK rotated: %s -> %s (%d keys re-wrapped)", old.id, new.id, count)
        return RotationResult(previous.id, new.id, count)


def _parse(policy: ReleasePolicy | Mapping[str, Any]) -> ReleasePolicy:
    return policy if isinstance(policy, ReleasePolicy) else parse_policy(dict(policy))


@functools.lru_cache(maxsize=512)
def stored_policy(text: str) -> ReleasePolicy:
    """Re-validate a policy read from storage (never trust rows blindly).

    Cached by exact text: releases re-read the same few policies all the time, and a
    ReleasePolicy is immutable.
    """
    try:
        # the stored normal form (defaults filled in) of an upload of at most the cap
        document = load_json(text, what="stored policy", max_bytes=4 * MAX_POLICY_BYTES)
    except FormatError:
        raise DecryptionError("stored policy is not valid JSON") from None
    return parse_policy(document)
