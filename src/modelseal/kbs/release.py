"""The key-release decision: load the key, evaluate its policy, audit, return the DEK.

One function serves every release path (Trustee RCAR resource requests and the ITA/CNAP
transfer), so both are governed by the same policy and leave the same audit rows. The DEK
is returned only after the audit row is committed; denials and unknown keys are audited
too, and their reasons never leave the KBS.
"""

from __future__ import annotations

import logging
from hashlib import sha256

from modelseal._internal.canonical import canonical_json
from modelseal.crypto.secret import SecretBytes
from modelseal.errors import ConfigError, DecryptionError, KeyNotFound, PolicyDenied
from modelseal.kbs.audit import AuditLog
from modelseal.kbs.keys import stored_policy
from modelseal.keystore.paths import is_valid_key_id
from modelseal.keystore.store import ACTIVE, KeyStore, LoadedKey
from modelseal.policy.document import ReleasePolicy
from modelseal.policy.evaluate import Decision, evaluate
from modelseal.protocol.claims import Claims

__all__ = ["claims_digest", "release_key"]

log = logging.getLogger(__name__)


def claims_digest(claims: Claims) -> str:
    """``sha256:<hex>`` of the RFC 8785 JSON of the claims (what the audit row names)."""
    try:
        return "sha256:" + sha256(canonical_json(claims.to_json())).hexdigest()
    except (TypeError, ValueError):
        return "sha256:" + sha256(repr(claims.to_json()).encode()).hexdigest()


def release_key(
    store: KeyStore,
    audit: AuditLog,
    resource_path: str,
    claims: Claims,
    *,
    token_id: str,
    requester: str,
    now: float,
    action: str = "key.release",
) -> SecretBytes:
    """Return the DEK of ``resource_path`` if its policy allows ``claims``; audit either way.

    Raises :class:`KeyNotFound` for unknown (or malformed) paths and :class:`PolicyDenied`
    otherwise; callers answer both with the same 403 so there is no existence oracle.
    """
    digest = claims_digest(claims)
    key_id = resource_path if is_valid_key_id(resource_path) else None
    policy_digest: str | None = None

    def record(decision: Decision) -> None:
        audit.record(
            actor=requester,
            action=action,
            key_id=key_id,
            tee=claims.tee,
            claims_digest=digest,
            policy_digest=policy_digest,
            decision=decision.verdict,
            reasons=[f"token_id={token_id}", *decision.reasons],
        )
        log.info(
            "%s %s for %s (tee %s): %s",
            action,
            key_id or "<invalid path>",
            requester,
            claims.tee,
            decision.verdict,
        )

    if key_id is None:
        record(Decision(False, ("malformed resource path",)))
        raise KeyNotFound("no such key")
    try:
        loaded: LoadedKey = store.load(key_id)
    except KeyNotFound:
        record(Decision(False, ("no such key",)))
        raise
    except DecryptionError as exc:
        record(Decision(False, (f"stored key failed authentication: {exc}",)))
        raise PolicyDenied(reasons=("stored key failed authentication",)) from None
    except ConfigError as exc:
        record(Decision(False, (str(exc),)))
        raise

    dek = loaded.dek
    try:
        policy_digest = loaded.record.policy_digest
        decision = _decide(loaded, claims, now)
        record(decision)
    except BaseException:
        dek.wipe()
        raise
    if not decision.allowed:
        dek.wipe()
        raise PolicyDenied(reasons=decision.reasons)
    return dek


def _decide(loaded: LoadedKey, claims: Claims, now: float) -> Decision:
    if loaded.record.state != ACTIVE:
        return Decision(False, (f"key is {loaded.record.state}",))
    policy: ReleasePolicy | None = None
    if loaded.policy_json is not None:
        try:
            policy = stored_policy(loaded.policy_json)
        except (ConfigError, DecryptionError) as exc:
            return Decision(False, (f"stored policy is invalid: {exc}",))
    return evaluate(policy, claims, now=now)
