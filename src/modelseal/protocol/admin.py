"""Wire models of the KBS admin API (``/modelseal/v1``); normative: docs/guides/kbs-operator.md.

Key ids travel in URL paths as three segments (``/keys/<repo>/<type>/<tag>``), exactly the
Trustee resource-path grammar, so no escaping is needed. Key bytes travel only in
``PutKeyRequest.key`` (base64url, no padding, like ``modelseal keygen`` files) over TLS,
and are never returned.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from hashlib import sha256
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, model_validator

from modelseal._internal.canonical import canonical_json

__all__ = [
    "API_PREFIX",
    "AUDIT_GENESIS",
    "AUDIT_HASHED_FIELDS",
    "AuditEntryModel",
    "AuditPage",
    "AuditVerifyResponse",
    "KeyInfo",
    "KeyList",
    "ModelDigestRequest",
    "ModelList",
    "ModelRecord",
    "PolicyInfo",
    "PutKeyRequest",
    "RotateResponse",
    "audit_row_hash",
    "check_audit_row",
    "iso_time",
    "verify_audit_chain",
]

API_PREFIX = "/modelseal/v1"


def iso_time(ts: float) -> str:
    """Unix seconds as RFC 3339 UTC text (``2026-11-22T00:00:00Z``)."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PutKeyRequest(_Strict):
    """``PUT /keys/{repo}/{type}/{tag}``: import ``key`` or ``generate`` one (exactly one)."""

    key: StrictStr | None = Field(default=None, max_length=64)
    generate: StrictBool = False
    policy: dict[str, Any] | None = None
    model_digest: StrictStr | None = Field(default=None, max_length=80)

    @model_validator(mode="after")
    def _one_source(self) -> PutKeyRequest:
        if (self.key is None) == (not self.generate):
            raise ValueError("give exactly one of key (base64url) or generate=true")
        return self


class KeyInfo(_Strict):
    key_id: str
    state: str
    kek_id: str
    size: int
    model_digest: str | None
    policy_digest: str | None
    created_at: str
    updated_at: str
    created: bool | None = None


class KeyList(_Strict):
    keys: list[KeyInfo]


class PolicyInfo(_Strict):
    key_id: str
    policy: dict[str, Any] | None
    policy_digest: str | None


class ModelDigestRequest(_Strict):
    model_digest: StrictStr | None = Field(max_length=80)


class ModelRecord(_Strict):
    """A sealed model as the KBS knows it: its digest, its key and that key's policy."""

    model_digest: str
    key_id: str
    state: str
    policy_digest: str | None


class ModelList(_Strict):
    models: list[ModelRecord]


class RotateResponse(_Strict):
    old_kek_id: str
    new_kek_id: str
    rewrapped: int


class AuditEntryModel(_Strict):
    seq: int
    time: str
    actor: str
    action: str
    key_id: str | None
    tee: str | None
    claims_digest: str | None
    policy_digest: str | None
    decision: str
    reasons: list[str]
    prev_hash: str
    row_hash: str


class AuditPage(_Strict):
    entries: list[AuditEntryModel]
    #: pass as ``after`` to read the next page; None when this page is the last
    next_after: int | None


class AuditVerifyResponse(_Strict):
    ok: bool
    rows: int
    first_bad_seq: int | None
    reason: str | None


# --- audit chain (shared by the KBS and by `modelseal kbs audit --verify`) ---------------

AUDIT_GENESIS = "0" * 64
#: Fields covered by ``row_hash`` (everything except ``row_hash`` itself).
AUDIT_HASHED_FIELDS = (
    "seq",
    "time",
    "actor",
    "action",
    "key_id",
    "tee",
    "claims_digest",
    "policy_digest",
    "decision",
    "reasons",
    "prev_hash",
)


def audit_row_hash(fields: Mapping[str, Any]) -> str:
    """SHA-256 hex of the RFC 8785 JSON object of :data:`AUDIT_HASHED_FIELDS`."""
    body = {name: fields[name] for name in AUDIT_HASHED_FIELDS}
    body["reasons"] = list(body["reasons"])
    return sha256(canonical_json(body)).hexdigest()


def check_audit_row(
    fields: Mapping[str, Any], stored_hash: str, expected_seq: int, prev_hash: str
) -> tuple[int, str] | None:
    """``(first bad seq, reason)`` if this row breaks the chain, else None."""
    seq = fields["seq"]
    if seq != expected_seq:
        return expected_seq, f"row {expected_seq} is missing (next row is {seq})"
    if fields["prev_hash"] != prev_hash:
        return seq, f"row {seq} does not link to the previous row (reordered or inserted)"
    try:
        recomputed = audit_row_hash(fields)
    except (TypeError, ValueError, KeyError):
        return seq, f"row {seq} is not valid"
    if recomputed != stored_hash:
        return seq, f"row {seq} was modified (its content does not match its hash)"
    return None


def verify_audit_chain(
    entries: Sequence[AuditEntryModel], *, start_seq: int = 1, start_prev: str = AUDIT_GENESIS
) -> AuditVerifyResponse:
    """Check a run of rows independently of the server (seq continuity, links, hashes)."""
    prev, expected = start_prev, start_seq
    for count, entry in enumerate(entries):
        bad = check_audit_row(entry.model_dump(), entry.row_hash, expected, prev)
        if bad is not None:
            return AuditVerifyResponse(ok=False, rows=count, first_bad_seq=bad[0], reason=bad[1])
        prev, expected = entry.row_hash, expected + 1
    return AuditVerifyResponse(ok=True, rows=len(entries), first_bad_seq=None, reason=None)
