"""Key administration on the KBS: the key store plus policies, audit rows and KEK rotation.

Every admin operation writes an audit row (actor = the token's subject). KEK rotation is
crash-safe: the new KEK is first written to ``kek.next``; all rows are re-wrapped in one
transaction; only then does ``kek.next`` replace ``kek``. A KBS that starts with a
``kek.next`` present finishes the interrupted rotation before serving.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelseal.crypto.kek import KEK_SIZE, Kek, KekRing, create_secret_file, read_secret_file
from modelseal.crypto.secret import SecretBytes
from modelseal.errors import DecryptionError
from modelseal.kbs.audit import AuditLog
from modelseal.keystore.store import KeyRecord, KeyStore
from modelseal.policy.document import ReleasePolicy, parse_policy

__all__ = [
    "KEK_FILE",
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

    def ensure(self) -> bool:
        """Generate the KEK once; True when this call created it."""
        created = create_secret_file(self.path, size=KEK_SIZE)
        if created:
            log.info("generated a new KEK at %s", self.path)
        return created

    def load(self) -> Kek:
        return Kek(read_secret_file(self.path, size=KEK_SIZE, what="KEK"))

    def load_next(self) -> Kek | None:
        if not (self.next_path.exists() or self.next_path.is_symlink()):
            return None
        return Kek(read_secret_file(self.next_path, size=KEK_SIZE, what="next KEK"))

    def create_next(self) -> Kek:
        create_secret_file(self.next_path, size=KEK_SIZE)
        nxt = self.load_next()
        assert nxt is not None
        return nxt

    def promote_next(self) -> None:
        """Atomically make ``kek.next`` the KEK; the old KEK bytes are gone afterwards."""
        os.replace(self.next_path, self.path)
        with contextlib.suppress(OSError):
            dfd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)


@dataclass(frozen=True)
class RotationResult:
    old_kek_id: str
    new_kek_id: str
    rewrapped: int


class KeyService:
    """Admin-facing key operations; each one leaves an audit row."""

    def __init__(self, store: KeyStore, audit: AuditLog, kek_files: KekFiles) -> None:
        self.store = store
        self._audit = audit
        self._kek_files = kek_files
        # Admin writes and KEK rotation exclude each other, so no key can be written
        # under a KEK that a concurrent rotation is about to retire.
        self._write_lock = threading.RLock()

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

    def put(
        self,
        key_id: str,
        dek: SecretBytes | None,
        *,
        policy: ReleasePolicy | Mapping[str, Any] | None = None,
        model_digest: str | None = None,
        actor: str,
    ) -> tuple[KeyRecord, bool]:
        """Import ``dek`` (or generate one when None) with an optional policy and digest."""
        parsed = None if policy is None else _parse(policy)
        with self._write_lock:
            record, created = self.store.put(
                key_id,
                dek,
                model_digest=model_digest,
                policy_json=None if parsed is None else parsed.canonical().decode(),
                policy_digest=None if parsed is None else parsed.digest,
            )
        action = "key.generate" if dek is None else "key.import"
        self._record(
            actor,
            action if created else "key.put-existing",
            key_id,
            policy_digest=record.policy_digest,
            reasons=[f"model_digest={record.model_digest}"] if record.model_digest else [],
        )
        return record, created

    def set_policy(
        self, key_id: str, policy: ReleasePolicy | Mapping[str, Any], *, actor: str
    ) -> ReleasePolicy:
        parsed = _parse(policy)
        with self._write_lock:
            self.store.set_policy(key_id, parsed.canonical().decode(), parsed.digest)
        self._record(actor, "policy.set", key_id, policy_digest=parsed.digest)
        return parsed

    def clear_policy(self, key_id: str, *, actor: str) -> KeyRecord:
        with self._write_lock:
            record = self.store.set_policy(key_id, None, None)
        self._record(actor, "policy.clear", key_id)
        return record

    def set_model_digest(self, key_id: str, model_digest: str | None, *, actor: str) -> KeyRecord:
        with self._write_lock:
            record = self.store.set_model_digest(key_id, model_digest)
        self._record(actor, "model.bind", key_id, reasons=[f"model_digest={model_digest}"])
        return record

    def revoke(self, key_id: str, *, actor: str) -> KeyRecord:
        with self._write_lock:
            record = self.store.revoke(key_id)
        self._record(actor, "key.revoke", key_id, policy_digest=record.policy_digest)
        return record

    def delete(self, key_id: str, *, actor: str) -> KeyRecord:
        with self._write_lock:
            record = self.store.delete(key_id)
        self._record(actor, "key.delete", key_id)
        return record

    def rotate_kek(self, *, actor: str) -> RotationResult:
        """Generate a new KEK, re-wrap every key under it in one transaction, retire the old.

        Sealed models are not touched (their DEKs are unchanged). Other KBS replicas must be
        restarted with the new KEK file afterwards; until then they fail closed.
        """
        with self._write_lock:
            old = self.store.ring.active
            new = self._kek_files.create_next()
            self.store.ring = KekRing(new, [*self.store.ring])
            count = self.store.rewrap_all(new)
            # The audit head is re-MACed under the new KEK by this row, while the old
            # KEK is still in the ring to authenticate the previous head.
            self._record(
                actor, "kek.rotate", None, reasons=[f"{old.id} -> {new.id}", f"rewrapped={count}"]
            )
            self._kek_files.promote_next()
            self.store.ring = KekRing(new)
            log.warning("KEK rotated: %s -> %s (%d keys re-wrapped)", old.id, new.id, count)
            return RotationResult(old.id, new.id, count)

    def finish_interrupted_rotation(self) -> RotationResult | None:
        """If ``kek.next`` exists (a rotation crashed), complete it before serving."""
        with self._write_lock:
            new = self._kek_files.load_next()
            if new is None:
                return None
            old = self.store.ring.active
            self.store.ring = KekRing(new, [*self.store.ring])
            count = self.store.rewrap_all(new)
            self._record(
                "kbs",
                "kek.rotate",
                None,
                reasons=[f"{old.id} -> {new.id}", f"rewrapped={count}", "resumed at start-up"],
            )
            self._kek_files.promote_next()
            self.store.ring = KekRing(new)
            log.warning("finished an interrupted KEK rotation: %s -> %s", old.id, new.id)
            return RotationResult(old.id, new.id, count)

    def _record(
        self,
        actor: str,
        action: str,
        key_id: str | None,
        *,
        policy_digest: str | None = None,
        reasons: list[str] | None = None,
    ) -> None:
        self._audit.record(
            actor=actor,
            action=action,
            key_id=key_id,
            tee=None,
            claims_digest=None,
            policy_digest=policy_digest,
            decision="ok",
            reasons=reasons or [],
        )


def _parse(policy: ReleasePolicy | Mapping[str, Any]) -> ReleasePolicy:
    return policy if isinstance(policy, ReleasePolicy) else parse_policy(dict(policy))


@functools.lru_cache(maxsize=512)
def stored_policy(text: str) -> ReleasePolicy:
    """Re-validate a policy read from storage (never trust rows blindly).

    Cached by exact text: releases re-read the same few policies all the time, and a
    ReleasePolicy is immutable.
    """
    try:
        document = json.loads(text)
    except ValueError:
        raise DecryptionError("stored policy is not valid JSON") from None
    return parse_policy(document)
