"""The key-release decision: read the key's row, evaluate its policy, audit, return the DEK.

One unit of work (``release_unit``) serves every release path (Trustee RCAR resource
requests and the ITA/CNAP transfer), so both are governed by the same policy and leave the
same audit rows. The decision and its audit row are ONE database transaction (or one
savepoint of a group commit) that starts by taking the audit append lock: the DEK is
returned only after the row is committed, denials and unknown
keys are audited too, and their reasons never leave the KBS.

The decision uses the row's metadata only (state, policy) and the claims. Only an allowed
release authenticates the row (its MAC covers that metadata and the wrapped DEK) and
unwraps the DEK, inside the same transaction: a denied request never touches the wrapped
key, and a row tampered with so as to allow fails its MAC before anything is released.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from hashlib import sha256
from typing import Any

from sqlalchemy import Connection

from modelseal._internal import metrics
from modelseal._internal.canonical import canonical_json
from modelseal.crypto.secret import SecretBytes
from modelseal.errors import ConfigError, DecryptionError, Error, KeyNotFound, PolicyDenied
from modelseal.kbs.audit import AuditLog
from modelseal.kbs.keys import stored_policy
from modelseal.kbs.units import Unit
from modelseal.keystore.paths import is_valid_key_id
from modelseal.keystore.store import ACTIVE, KeyStore, StoredKey
from modelseal.policy.document import ReleasePolicy
from modelseal.policy.evaluate import Decision, evaluate
from modelseal.protocol.claims import Claims

__all__ = ["ReleaseOutcome", "claims_digest", "release_unit", "released"]

#: audit action -> the ``api`` label of the release metric
_API = {"key.release": "rcar", "key.transfer": "transfer"}

log = logging.getLogger(__name__)


def claims_digest(claims: Claims) -> str:
    """``sha256:<hex>`` of the RFC 8785 JSON of the claims (what the audit row names)."""
    try:
        return "sha256:" + sha256(canonical_json(claims.to_json())).hexdigest()
    except (TypeError, ValueError):
        return "sha256:" + sha256(repr(claims.to_json()).encode()).hexdigest()


@dataclass
class ReleaseOutcome:
    """What a release unit decided (and committed): the DEK on allow, the error otherwise."""

    decision: Decision
    policy_digest: str | None = None
    dek: SecretBytes | None = None
    error: Error | None = None
    #: the path names a stored key (only those become metric labels)
    known: bool = True
    #: what the log line after the commit names: action, key id, requester, TEE kind
    note: tuple[str, str, str, str] = ("", "", "", "")

    def discard(self) -> None:
        """Wipe the DEK of an outcome that will never be answered."""
        if self.dek is not None:
            self.dek.wipe()


def release_unit(
    store: KeyStore,
    audit: AuditLog,
    resource_path: str,
    claims: Claims,
    *,
    token_id: str,
    requester: str,
    now: float,
    action: str = "key.release",
) -> Unit[ReleaseOutcome]:
    """The unit of work of one release: take the audit lock, decide, append the audit row.

    The unit returns the outcome (allow with the DEK, or a denial with its error) so that
    the audit row of a denial commits too; :func:`released` turns it into the DEK or the
    error once committed.
    """
    digest = claims_digest(claims)
    key_id = resource_path if is_valid_key_id(resource_path) else None

    def row(outcome: ReleaseOutcome) -> dict[str, Any]:
        """The audit row of ``outcome`` (the same fields whichever path decided it)."""
        return {
            "actor": requester,
            "action": action,
            "key_id": key_id,
            "tee": claims.tee,
            "claims_digest": digest,
            "policy_digest": outcome.policy_digest,
            "decision": outcome.decision.verdict,
            "reasons": [f"token_id={token_id}", *outcome.decision.reasons],
        }

    def decide(conn: Connection) -> ReleaseOutcome:
        head = audit.lock(conn)
        outcome = _decide_and_unwrap(store, conn, key_id, claims, now)
        try:
            audit.append(conn, head=head, **row(outcome))
        except BaseException:
            outcome.discard()
            raise
        outcome.note = (action, key_id or "<invalid path>", requester, claims.tee)
        return outcome

    return decide


def released(outcome: ReleaseOutcome) -> SecretBytes:
    """The DEK of a committed allow; the denial's error (PolicyDenied / KeyNotFound).

    Runs in the request's context once the decision is committed: its log line carries the
    request id, and the decision is counted (only ids of stored keys become label values,
    see ``metrics.key_label``)."""
    action, key_id = outcome.note[0], outcome.note[1]
    metrics.KEY_RELEASES.labels(
        metrics.key_label(key_id, exists=outcome.known),
        outcome.decision.verdict,
        _API.get(action, "other"),
    ).inc()
    log.info("%s %s for %s (tee %s): %s", *outcome.note, outcome.decision.verdict)
    if outcome.error is not None:
        raise outcome.error
    assert outcome.dek is not None
    return outcome.dek


def _decide_and_unwrap(
    store: KeyStore, conn: Connection, key_id: str | None, claims: Claims, now: float
) -> ReleaseOutcome:
    """Decide on the row's metadata; only on allow authenticate the row and unwrap its DEK.

    Nothing is written here, so a failed authentication or an unknown KEK turns into an
    ordinary denial in the same transaction (its reason goes to the audit row only).
    """
    for attempt in (1, 2):
        stored = None if key_id is None else _read(store, conn, key_id)
        if stored is None:
            return _unknown("malformed resource path" if key_id is None else None)
        outcome = _decide(stored, claims, now)
        if outcome.error is not None:
            return outcome
        try:
            outcome.dek = store.unwrap(stored)
        except DecryptionError as exc:
            return ReleaseOutcome(
                Decision(False, (f"stored key failed authentication: {exc}",)),
                error=PolicyDenied(reasons=("stored key failed authentication",)),
            )
        except ConfigError as exc:
            if attempt == 1:
                # Rotation raced with us (the row names a KEK the ring just dropped):
                # read the row again.
                continue
            # Even after the retry the row names a KEK this KBS does not hold: a row
            # written back from before a rotation, or tampering (a wrong KEK file is
            # refused at start-up). Fail closed like any failed authentication: the
            # requester sees the usual denial, the reason goes to the audit log.
            log.warning("release of %s refused: %s", key_id, exc)
            return ReleaseOutcome(
                Decision(False, (str(exc),)),
                error=PolicyDenied(reasons=("stored key names a KEK this KBS does not hold",)),
            )
        return outcome
    raise AssertionError("unreachable")


def _read(store: KeyStore, conn: Connection, key_id: str) -> StoredKey | None:
    """The key's row, or None for an unknown key.

    An unknown key is decided and audited in the same transaction as a denial, so it
    costs the same round trips as a known one.
    """
    try:
        return store.read_with(conn, key_id)
    except KeyNotFound:
        return None


def _unknown(reason: str | None = None) -> ReleaseOutcome:
    """A denial for a path that names no stored key (the caller answers it like any deny)."""
    return ReleaseOutcome(
        Decision(False, (reason or "no such key",)),
        error=KeyNotFound("no such key"),
        known=False,
    )


def _decide(stored: StoredKey, claims: Claims, now: float) -> ReleaseOutcome:
    """The decision on metadata alone (state, policy, claims); the DEK is not touched."""
    policy_digest = stored.record.policy_digest
    decision = _evaluate(stored, claims, now)
    if decision.allowed:
        return ReleaseOutcome(decision, policy_digest)
    return ReleaseOutcome(decision, policy_digest, error=PolicyDenied(reasons=decision.reasons))


def _evaluate(stored: StoredKey, claims: Claims, now: float) -> Decision:
    """Deny or allow on the row's metadata, which is not authenticated yet.

    A row edited in SQL can only make this deny (nothing is released on a deny); an edit
    that makes it allow fails the row's MAC in :meth:`KeyStore.unwrap`. So an unreadable
    stored policy is a denial here, never an exception.
    """
    if stored.record.state != ACTIVE:
        return Decision(False, (f"key is {stored.record.state}",))
    policy: ReleasePolicy | None = None
    if stored.policy_json is not None:
        try:
            policy = stored_policy(stored.policy_json)
        except (ConfigError, DecryptionError) as exc:
            return Decision(False, (f"stored policy is invalid: {exc}",))
        except RecursionError:
            return Decision(False, ("stored policy is invalid: nested too deeply",))
    return evaluate(policy, claims, now=now)
