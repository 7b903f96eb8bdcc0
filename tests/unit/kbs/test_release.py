"""Release order: the policy decides on metadata; only an allowed release unwraps the DEK.

A key row whose wrapped DEK was corrupted in SQL (last byte flipped) shows the order from
outside: a release the policy denies is a plain policy denial, because the wrapped DEK is
never authenticated or unwrapped; a release the policy allows reaches the row's MAC check
and is the audited "stored key failed authentication" denial.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelseal._internal.clock import FixedClock
from modelseal.crypto.kek import SoftwareKek
from modelseal.crypto.secret import SecretBytes
from modelseal.errors import PolicyDenied
from modelseal.kbs.audit import AuditEntry
from modelseal.kbs.state import KbsState
from modelseal.keystore.store import KeyStore, StoredKey
from modelseal.protocol.claims import Claims

KEY_ID = "models/m/v1"
POLICY = {"apiVersion": "modelseal/v1", "kind": "ReleasePolicy", "tee": ["sample"]}
ALLOWED = Claims(tee="sample", debug=False, report_data=b"", tcb_status="UpToDate", insecure=True)
DENIED = Claims(tee="tdx", debug=False, report_data=b"", tcb_status="UpToDate")
DEK = SecretBytes(os.urandom(32))


@pytest.fixture
def state(tmp_path: Path) -> Iterator[KbsState]:
    s = KbsState.open(tmp_path, clock=FixedClock())
    s.keys.put(KEY_ID, DEK, policy=POLICY, actor="admin:t")
    yield s
    s.close()


@pytest.fixture
def unwrapped(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The key ids whose DEK the key store was asked to authenticate and unwrap."""
    calls: list[str] = []
    original = KeyStore.unwrap

    def spy(self: KeyStore, stored: StoredKey) -> SecretBytes:
        calls.append(stored.record.key_id)
        return original(self, stored)

    monkeypatch.setattr(KeyStore, "unwrap", spy)
    return calls


def _sql(state: KbsState, statement: str, *args: object) -> object:
    conn = sqlite3.connect(state.data_dir / "kbs.sqlite3")
    try:
        row = conn.execute(statement, args).fetchone()
        conn.commit()
        return row
    finally:
        conn.close()


def _denial(state: KbsState, claims: Claims) -> tuple[str, ...]:
    with pytest.raises(PolicyDenied) as denied:
        state.release(KEY_ID, claims, token_id="t", requester="r")
    return denied.value.reasons


def _last_release(state: KbsState) -> AuditEntry:
    return [e for e in state.audit.entries() if e.action == "key.release"][-1]


def test_a_denied_release_never_unwraps(state: KbsState, unwrapped: list[str]) -> None:
    assert any("tdx" in reason for reason in _denial(state, DENIED))
    assert unwrapped == []
    assert state.release(KEY_ID, ALLOWED, token_id="t", requester="r") == DEK
    assert unwrapped == [KEY_ID]


def test_corrupted_wrapped_dek_is_only_noticed_on_allow(
    state: KbsState, unwrapped: list[str]
) -> None:
    policy_says = _denial(state, DENIED)
    row = _sql(state, "SELECT wrapped FROM ms_keys WHERE key_id = ?", KEY_ID)
    assert isinstance(row, tuple)
    wrapped: bytes = row[0]
    corrupted = wrapped[:-1] + bytes([wrapped[-1] ^ 1])
    _sql(state, "UPDATE ms_keys SET wrapped = ? WHERE key_id = ?", corrupted, KEY_ID)

    # Denied by the policy: the same plain denial as for the intact key.
    assert _denial(state, DENIED) == policy_says
    denied = _last_release(state)
    assert denied.decision == "deny"
    assert not any("authentication" in reason for reason in denied.reasons)
    assert unwrapped == []

    # Allowed by the policy: the row's MAC (over the wrapped DEK) refuses it, audited.
    assert _denial(state, ALLOWED) == ("stored key failed authentication",)
    failed = _last_release(state)
    assert failed.decision == "deny"
    assert any(r.startswith("stored key failed authentication") for r in failed.reasons)
    assert unwrapped == [KEY_ID]
    assert state.audit.verify().ok


def test_row_under_an_unknown_kek_is_only_noticed_on_allow(
    state: KbsState, unwrapped: list[str]
) -> None:
    policy_says = _denial(state, DENIED)
    _sql(state, "UPDATE ms_keys SET kek_id = ? WHERE key_id = ?", SoftwareKek.generate().id, KEY_ID)

    assert _denial(state, DENIED) == policy_says
    assert unwrapped == []

    # Allowed: the KEK lookup fails, is retried once (a rotation may have raced), then
    # refused and audited as a denial.
    assert _denial(state, ALLOWED) == ("stored key names a KEK this KBS does not hold",)
    failed = _last_release(state)
    assert failed.decision == "deny"
    assert any("does not hold" in reason for reason in failed.reasons)
    assert unwrapped == [KEY_ID, KEY_ID]
    assert state.audit.verify().ok


def test_revoked_key_is_denied_without_unwrapping(state: KbsState, unwrapped: list[str]) -> None:
    state.keys.revoke(KEY_ID, actor="admin:t")
    assert _denial(state, ALLOWED) == ("key is revoked",)
    assert unwrapped == []


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("policy_json", '{"apiVersion":"modelseal/v1","kind":"ReleasePolicy","tee":["sample"]}'),
        ("state", "active"),
    ],
    ids=["permissive-policy", "revoked-to-active"],
)
def test_row_edited_to_allow_fails_its_mac(
    state: KbsState, unwrapped: list[str], column: str, value: str
) -> None:
    # Deciding on metadata before the MAC check is safe: an edit that turns a denial
    # into an allow reaches the MAC check, which covers the metadata decided on.
    state.keys.set_policy(KEY_ID, {**POLICY, "tee": ["tdx"]}, actor="admin:t")
    if column == "state":
        state.keys.set_policy(KEY_ID, POLICY, actor="admin:t")
        state.keys.revoke(KEY_ID, actor="admin:t")
    assert _denial(state, ALLOWED) != ("stored key failed authentication",)
    _sql(state, f"UPDATE ms_keys SET {column} = ? WHERE key_id = ?", value, KEY_ID)
    assert _denial(state, ALLOWED) == ("stored key failed authentication",)
    assert unwrapped == [KEY_ID]
    assert _last_release(state).decision == "deny"


@pytest.mark.parametrize(
    "policy_json", ["not json", "[" * 100_000 + "]" * 100_000, '{"kind": "ReleasePolicy"}']
)
def test_unreadable_stored_policy_is_a_denial(
    state: KbsState, unwrapped: list[str], policy_json: str
) -> None:
    _sql(state, "UPDATE ms_keys SET policy_json = ? WHERE key_id = ?", policy_json, KEY_ID)
    reasons = _denial(state, ALLOWED)
    assert reasons[0].startswith("stored policy is invalid")
    assert unwrapped == []
    assert _last_release(state).decision == "deny"
