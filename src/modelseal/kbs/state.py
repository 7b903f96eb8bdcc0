"""Everything the KBS keeps: data directory, database, KEK, admin credential, keys, audit.

``KbsState.open(data_dir)`` is the one entry point for servers and tools. The data directory
holds, each created once and refused when its permissions are too open::

    DIR/                   0700
      kbs.sqlite3          SQLite (WAL) unless --database-url selects PostgreSQL; its
                           schema is made and upgraded by modelseal.kbs.schema (Alembic)
      kek                  32 random bytes, 0600: wraps every stored DEK
      kek.next             only during a KEK rotation
      admin-credential     32 random bytes, 0600: signs admin bearer tokens
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import os
import secrets
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path

from sqlalchemy import Float, String, delete
from sqlalchemy.exc import DatabaseError, OperationalError
from sqlalchemy.orm import Mapped, mapped_column

import modelseal.kbs.ita_tables  # noqa: F401  (registers the ITA tables on Base.metadata)
from modelseal._internal.clock import Clock, SystemClock
from modelseal.crypto.kek import KekRing
from modelseal.crypto.pkcs11_kek import Pkcs11Token, parse_pkcs11_uri
from modelseal.crypto.secret import SecretBytes
from modelseal.errors import BackendError, ConfigError, IntegrityError, TokenError
from modelseal.kbs.admin_auth import ADMIN_CREDENTIAL_FILE, ensure_admin_credential
from modelseal.kbs.audit import AuditEntry, AuditLog, AuditVerification
from modelseal.kbs.db import Base, Database, sqlite_url
from modelseal.kbs.kek_stores import KekSources, KekStore, TokenKeks
from modelseal.kbs.keys import KekFiles, KeyService
from modelseal.kbs.migrations import stamped_at_head
from modelseal.kbs.release import ReleaseOutcome, release_unit, released
from modelseal.kbs.units import Unit, run_alone
from modelseal.keystore.store import KeyStore
from modelseal.protocol.claims import Claims

__all__ = [
    "KbsState",
    "TransferNonce",
    "ensure_data_dir",
    "offline_audit_entries",
    "offline_audit_verify",
]

log = logging.getLogger(__name__)

#: How long a transfer nonce (ITA/CNAP round 1) stays valid.
TRANSFER_NONCE_TTL = 300.0


class TransferNonceRow(Base):
    """A single-use nonce of the ITA/CNAP two-round key transfer (shared by replicas)."""

    __tablename__ = "ms_transfer_nonces"

    nonce: Mapped[str] = mapped_column(String(128), primary_key=True)
    key_id: Mapped[str] = mapped_column(String(255))
    expires_at: Mapped[float] = mapped_column(Float, index=True)


@dataclass(frozen=True)
class TransferNonce:
    value: bytes
    key_id: str
    expires_at: float


def ensure_data_dir(data_dir: Path) -> Path:
    """Create ``data_dir`` (0700) or tighten an existing one we own to 0700."""
    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = data_dir.stat()
    except OSError as exc:
        raise ConfigError(f"cannot create data directory {data_dir}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"data directory {data_dir} is not a directory")
    if stat.S_IMODE(st.st_mode) & 0o077:
        try:
            os.chmod(data_dir, 0o700)
        except OSError:
            raise ConfigError(
                f"data directory {data_dir} is accessible by other users and cannot be "
                f"restricted (chmod 700 {data_dir})"
            ) from None
        log.warning("restricted data directory %s to mode 0700", data_dir)
    return data_dir


def _check_kek_matches(store: KeyStore, audit: AuditLog) -> None:
    """Refuse to start with a KEK that cannot read the stored keys or the audit head."""

    def held(kek_id: str) -> bool:
        try:
            store.ring.get(kek_id)  # also finds kek.next of an interrupted rotation
        except ConfigError:
            return False
        return True

    foreign = sorted(k for k in store.count_by_kek() if not held(k))
    head = audit.head_kek_id()
    if head is not None and not held(head):
        foreign.append(f"{head} (audit log)")
    if foreign:
        raise ConfigError(
            f"the database was written under {', '.join(foreign)}, but this KBS holds "
            f"{store.ring.active.id}; start the KBS with the KEK file it was created with "
            "(for a KEK in a PKCS#11 token: --kek-uri, or --kek-previous-uri while moving)"
        )


def _ensure_kek(stores: KekSources, head_kek_id: str | None) -> None:
    """Generate the first KEK for a new database only: a database that names a KEK no
    store holds is refused, and no stray KEK is left behind by the refusal."""
    stores.recover()
    if head_kek_id is None:
        stores.ensure()
    elif not stores.has_active() and stores.load_next() is None:
        raise ConfigError(
            f"the database was written under {head_kek_id}, but no KEK is in "
            f"{stores.describe()}; start the KBS with the KEK file it was created with "
            "(for a KEK in a PKCS#11 token: --kek-uri, or --kek-previous-uri while moving)"
        )


class KbsState:
    """Opened state of one KBS (one replica). Thread-safe; share it between requests."""

    def __init__(
        self,
        *,
        data_dir: Path,
        db: Database,
        store: KeyStore,
        keys: KeyService,
        audit: AuditLog,
        admin_key: SecretBytes,
        clock: Clock,
    ) -> None:
        self.data_dir = data_dir
        self.db = db
        self.store = store
        self.keys = keys
        self.audit = audit
        self.admin_key = admin_key
        self.clock = clock

    @classmethod
    def open(
        cls,
        data_dir: Path,
        *,
        database_url: str | None = None,
        clock: Clock | None = None,
        kek_uri: str | None = None,
        kek_previous_uri: str | None = None,
    ) -> KbsState:
        """Create or open the data directory, database, KEK and admin credential.

        ``kek_uri`` names where KEKs live (None or ``"file"``: the data directory's ``kek``
        file; a ``pkcs11:`` URI: a token); ``kek_previous_uri`` a store being moved away
        from (see :class:`~modelseal.kbs.kek_stores.KekSources`).
        """
        clock = clock or SystemClock()
        data_dir = ensure_data_dir(Path(data_dir))
        kek_files = open_kek_sources(data_dir, kek_uri, kek_previous_uri)
        admin_key = ensure_admin_credential(data_dir)
        db = Database(database_url or sqlite_url(data_dir))
        with db.read_connection() as conn:
            current = stamped_at_head(conn)
        if not current:  # Alembic (imported only now) creates, or names what to run
            from modelseal.kbs.schema import ensure_current

            ensure_current(db, data_dir, database_url=database_url)
        _ensure_kek(kek_files, AuditLog(db, lambda: store.ring).head_kek_id())
        ring = KekRing(kek_files.load(), reload=kek_files.on_disk)
        store = KeyStore(db.begin, ring, clock=clock)
        audit = AuditLog(db, lambda: store.ring, clock=clock)
        keys = KeyService(db, store, audit, kek_files)
        _check_kek_matches(store, audit)
        audit.init_head()
        keys.finish_interrupted_rotation()
        log.info(
            "KBS state opened: data dir %s, database %s, KEK %s",
            data_dir,
            "sqlite" if db.is_sqlite else "postgresql",
            store.ring.active.id,
        )
        return cls(
            data_dir=data_dir,
            db=db,
            store=store,
            keys=keys,
            audit=audit,
            admin_key=admin_key,
            clock=clock,
        )

    @property
    def admin_credential_path(self) -> Path:
        return self.data_dir / ADMIN_CREDENTIAL_FILE

    def release(
        self, resource_path: str, claims: Claims, *, token_id: str, requester: str
    ) -> SecretBytes:
        """Policy-checked, audited release of a DEK (raises PolicyDenied / KeyNotFound);
        blocking: the decision and its audit row commit as a transaction of their own."""
        return released(
            run_alone(self.db, self.release_unit(resource_path, claims, token_id, requester))
        )

    def release_unit(
        self,
        resource_path: str,
        claims: Claims,
        token_id: str,
        requester: str,
        action: str = "key.release",
    ) -> Unit[ReleaseOutcome]:
        """The same decision as :meth:`release` as a unit of work, for a unit runner
        (``modelseal.kbs.units``); :func:`~modelseal.kbs.release.released` turns its
        committed outcome into the DEK or the denial."""
        return release_unit(
            self.store,
            self.audit,
            resource_path,
            claims,
            token_id=token_id,
            requester=requester,
            now=self.clock.now(),
            action=action,
        )

    def release_for_transfer(
        self, key_id: str, claims: Claims, *, requester: str, nonce_id: str
    ) -> SecretBytes:
        """The same release decision for the ITA/CNAP transfer endpoint."""
        unit = self.release_unit(key_id, claims, nonce_id, requester, action="key.transfer")
        return released(run_alone(self.db, unit))

    # --- ITA/CNAP transfer nonces (single-use, TTL, in the database) --------------------

    def issue_transfer_nonce(
        self, key_id: str, *, ttl: float = TRANSFER_NONCE_TTL
    ) -> TransferNonce:
        """Store a fresh single-use nonce for ``key_id`` in the database (shared by all
        replicas); expired ones are purged on the way so the table stays small."""
        value = secrets.token_bytes(32)
        now = self.clock.now()
        with self.db.begin() as s:
            s.execute(delete(TransferNonceRow).where(TransferNonceRow.expires_at <= now))
            s.add(TransferNonceRow(nonce=value.hex(), key_id=key_id, expires_at=now + ttl))
        return TransferNonce(value, key_id, now + ttl)

    def transfer_nonce_mac(self, value: bytes, iat: bytes) -> bytes:
        """The ``signature`` binding a transfer nonce to its ``iat`` (round 1 -> round 2).

        Keyed by a sub-key of the admin credential, not the KEK: every worker and replica
        holds the same credential and it does not change when the KEK rotates, so a nonce
        issued before a rotation (or by a worker that has not seen it yet) still verifies.
        The label keeps it apart from admin-token signatures under the same credential.
        """
        key = hmac.new(self.admin_key.reveal(), b"modelseal transfer-nonce key", sha256).digest()
        return hmac.new(key, value + b"\x00" + iat, sha256).digest()

    def consume_transfer_nonce(self, value: bytes, key_id: str) -> None:
        """Delete the nonce; TokenError unless it existed, was unexpired and for ``key_id``."""
        now = self.clock.now()
        with self.db.begin() as s:
            result = s.execute(
                delete(TransferNonceRow).where(
                    TransferNonceRow.nonce == value.hex(),
                    TransferNonceRow.key_id == key_id,
                    TransferNonceRow.expires_at > now,
                )
            )
            used = getattr(result, "rowcount", 0)
        if used != 1:
            raise TokenError("unknown, expired or already used nonce")

    def close(self) -> None:
        self.db.dispose()


#: Rows read per query when an offline reader pages through the audit log.
_AUDIT_PAGE = 1000


def open_kek_sources(
    data_dir: Path, kek_uri: str | None, kek_previous_uri: str | None = None
) -> KekSources:
    """The KEK stores of a data directory: the primary named by ``kek_uri`` and the store
    being moved away from (``kek_previous_uri``; with a token as primary, the data
    directory's ``kek`` file is always still read)."""
    files = KekFiles(data_dir)

    def store(uri: str) -> KekStore:
        if uri == "file":
            return files
        parsed = parse_pkcs11_uri(uri)
        return TokenKeks(Pkcs11Token.open(parsed), parsed.object, files.lock_path)

    primary = store(kek_uri or "file")
    if kek_previous_uri is not None and (kek_previous_uri or "file") == (kek_uri or "file"):
        raise ConfigError("--kek-previous-uri names the same store as --kek-uri")
    if kek_previous_uri is not None:
        previous: KekStore | None = store(kek_previous_uri)
    else:
        previous = files if primary is not files else None
    return KekSources(primary, previous)


def _offline_audit(
    data_dir: Path, database_url: str | None, kek_uri: str | None = None
) -> AuditLog:
    """The audit log of a data directory, opened without creating files or rows.

    Unlike :meth:`KbsState.open` this neither makes nor upgrades anything, so an auditor can
    read a copy of a data directory (or a stopped KBS's) without changing what is audited.
    """
    if kek_uri is None and not KekFiles(data_dir).has_active():
        raise ConfigError(
            f"{data_dir} is not a KBS data directory (no kek file); for a KEK in a PKCS#11 "
            "token pass --kek-uri"
        )
    files = open_kek_sources(data_dir, kek_uri)
    if not files.has_active():
        raise ConfigError(f"no KEK in {files.describe()}")
    if database_url is None and not (data_dir / "kbs.sqlite3").exists():
        raise ConfigError(f"{data_dir} has no kbs.sqlite3; pass --database-url for PostgreSQL")
    ring = KekRing(files.load(), reload=files.on_disk)
    return AuditLog(Database(database_url or sqlite_url(data_dir)), lambda: ring)


@contextlib.contextmanager
def _unreadable_is_integrity(data_dir: Path, database_url: str | None) -> Iterator[None]:
    """A data directory's SQLite file that is not a database (overwritten, truncated) is an
    integrity failure (exit 5), not a transient outage (75); a locked database stays 75."""
    try:
        yield
    except BackendError as exc:
        cause = exc.__cause__
        if (
            database_url is None
            and isinstance(cause, DatabaseError)
            and not isinstance(cause, OperationalError)
        ):
            raise IntegrityError(
                f"{data_dir / 'kbs.sqlite3'} is not a readable SQLite database "
                f"({type(cause).__name__}); the audit log cannot be verified"
            ) from None
        raise


def offline_audit_entries(
    data_dir: Path,
    database_url: str | None = None,
    *,
    after: int = 0,
    limit: int | None = None,
    kek_uri: str | None = None,
) -> list[AuditEntry]:
    """Audit rows after ``seq`` ``after`` (at most ``limit``), read from a data directory.

    ConfigError when ``data_dir`` is not a KBS data directory; IntegrityError when its SQLite
    file is not a database; BackendError when the database cannot be reached.
    """
    log = _offline_audit(data_dir, database_url, kek_uri)
    entries: list[AuditEntry] = []
    with _unreadable_is_integrity(data_dir, database_url):
        cursor = after
        while limit is None or len(entries) < limit:
            page = log.entries(after=cursor, limit=_AUDIT_PAGE)
            entries.extend(page)
            if len(page) < _AUDIT_PAGE:
                break
            cursor = page[-1].seq
    return entries[:limit] if limit is not None else entries


def offline_audit_verify(
    data_dir: Path, database_url: str | None = None, *, kek_uri: str | None = None
) -> AuditVerification:
    """Verify the hash chain and head MAC of a data directory's audit log (errors as
    :func:`offline_audit_entries`; a broken chain is a verdict, not an exception)."""
    log = _offline_audit(data_dir, database_url, kek_uri)
    with _unreadable_is_integrity(data_dir, database_url):
        return log.verify()
