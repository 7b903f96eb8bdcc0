"""Make the pre-migration KBS database fixture in this directory (run once; kept for the record).

Usage: ``.venv/bin/python tests/vectors/kbs-db/make_fixture.py [OUTDIR]``

This script was run with the code of the last commit before schema migrations existed
(when ``KbsState.open`` still made the schema with ``create_all()``), so ``kbs.sqlite3`` holds
exactly the tables and rows that code wrote and no schema version table. Run with later
code it makes a database that is already at the migration head, which is NOT what the
upgrade test needs: regenerate only from that old commit.

What it does, through the public state API only: imports and generates keys, sets and
clears policies, binds a model digest, revokes a key, deletes one, releases keys (allowed
and denied, by RCAR and by the transfer path), issues a transfer nonce and an RCAR session,
and rotates the KEK, so every table has rows and the audit chain crosses a rotation.
``expected.json`` records what the upgrade test compares: key ids with their DEK bytes
(hex), state, model digest and policy digest, and the audit row count.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
from pathlib import Path

import modelseal.kbs.sessions as sessions  # the table `kbs serve` creates (create_app)
from modelseal._internal.clock import FixedClock
from modelseal.crypto.secret import SecretBytes
from modelseal.errors import KeyNotFound, PolicyDenied
from modelseal.kbs.db import Base
from modelseal.kbs.state import KbsState
from modelseal.protocol.claims import Claims

HERE = Path(__file__).resolve().parent
SAMPLE_POLICY = {"apiVersion": "modelseal/v1", "kind": "ReleasePolicy", "tee": ["sample"]}
TDX_POLICY = {
    "apiVersion": "modelseal/v1",
    "kind": "ReleasePolicy",
    "tee": ["tdx", "mock-tdx"],
    "tcb_status": ["UpToDate", "SWHardeningNeeded"],
    "measurements": [{"mrtd": "ab" * 48, "rtmr0": "cd" * 48}],
    "init_data": {"sha384": "ef" * 48},
    "not_after": "2031-01-01T00:00:00Z",
}
SAMPLE = Claims(tee="sample", debug=False, report_data=b"", insecure=True)
DIGEST_A = "sha256:" + "a1" * 32
DIGEST_B = "sha256:" + "b2" * 32


def make(out: Path) -> dict[str, object]:
    data = out / "data"
    if data.exists():
        shutil.rmtree(data)
    clock = FixedClock(1_790_000_000.0)
    state = KbsState.open(data, clock=clock)
    try:
        # today's `kbs serve` creates the RCAR session table in create_app()
        Base.metadata.create_all(state.db.engine)
        keys = state.keys
        imported = {
            "models/fixture/imported-256": bytes(range(32)),
            "models/fixture/imported-128": bytes(range(100, 116)),
            "models/fixture/imported-192": bytes(range(200, 224)),
        }
        for key_id, dek in imported.items():
            clock.advance(1)
            keys.put(key_id, SecretBytes(dek), actor="fixture-admin")
        clock.advance(1)
        keys.put("models/fixture/generated", None, policy=SAMPLE_POLICY, actor="publisher")
        clock.advance(1)
        keys.put(
            "models/fixture/bound",
            None,
            policy=TDX_POLICY,
            model_digest=DIGEST_A,
            actor="publisher",
        )
        keys.put("models/fixture/revoked", None, policy=SAMPLE_POLICY, actor="publisher")
        keys.put("models/fixture/deleted", None, actor="publisher")
        clock.advance(1)
        keys.set_policy("models/fixture/imported-256", SAMPLE_POLICY, actor="fixture-admin")
        keys.set_policy("models/fixture/imported-128", TDX_POLICY, actor="fixture-admin")
        keys.set_policy("models/fixture/imported-192", SAMPLE_POLICY, actor="fixture-admin")
        keys.clear_policy("models/fixture/imported-192", actor="fixture-admin")
        keys.set_model_digest("models/fixture/imported-256", DIGEST_B, actor="fixture-admin")
        clock.advance(1)
        # releases: allowed (RCAR and transfer), denied by policy, no policy, revoked, unknown
        for i in range(3):
            state.release(
                "models/fixture/imported-256", SAMPLE, token_id=f"tok-{i}", requester="10.0.0.1"
            ).wipe()
        state.release_for_transfer(
            "models/fixture/generated", SAMPLE, requester="10.0.0.2", nonce_id="nonce-1"
        ).wipe()
        keys.revoke("models/fixture/revoked", actor="fixture-admin")
        for key_id in (
            "models/fixture/imported-128",
            "models/fixture/imported-192",
            "models/fixture/revoked",
        ):
            try:
                state.release(key_id, SAMPLE, token_id="tok-deny", requester="10.0.0.3")
            except PolicyDenied:
                pass
            else:
                raise AssertionError(f"{key_id} was released")
        with contextlib.suppress(KeyNotFound):
            state.release("models/fixture/missing", SAMPLE, token_id="tok-x", requester="r")
        clock.advance(1)
        rotation = keys.rotate_kek(actor="fixture-admin")
        keys.delete("models/fixture/deleted", actor="fixture-admin")
        clock.advance(1)
        state.release(
            "models/fixture/generated", SAMPLE, token_id="tok-after", requester="10.0.0.1"
        ).wipe()
        # one unexpired transfer nonce and one pending RCAR session (1 year TTL)
        state.issue_transfer_nonce("models/fixture/generated", ttl=365 * 86400.0)
        sessions.SessionStore(state.db, ttl=365 * 86400.0, clock=clock).create(
            "sample", "fixture-nonce"
        )

        verification = state.audit.verify()
        assert verification.ok, verification
        keys_out = []
        for record in state.store.list_keys():
            loaded = state.store.load(record.key_id)
            keys_out.append(
                {
                    "key_id": record.key_id,
                    "dek_hex": loaded.dek.reveal().hex(),
                    "state": record.state,
                    "kek_id": record.kek_id,
                    "size": record.size,
                    "model_digest": record.model_digest,
                    "policy_digest": record.policy_digest,
                    "policy_json": loaded.policy_json,
                }
            )
            loaded.dek.wipe()
        head = state.audit.entries(after=verification.rows - 1, limit=1)[0]
        expected: dict[str, object] = {
            "made_by": "tests/vectors/kbs-db/make_fixture.py before schema migrations",
            "kek_id": rotation.new_kek_id,
            "retired_kek_id": rotation.old_kek_id,
            "keys": keys_out,
            "audit_rows": verification.rows,
            "audit_head_hash": head.row_hash,
            "audit_actions": [e.action for e in state.audit.entries(limit=1000)],
            "tables": [*sorted(Base.metadata.tables), "ms_keys"],
        }
    finally:
        state.close()
    for leftover in ("kbs.sqlite3-wal", "kbs.sqlite3-shm"):
        if (data / leftover).exists():
            raise AssertionError(f"{leftover} left behind: the database was not checkpointed")
    (out / "expected.json").write_text(json.dumps(expected, indent=2, sort_keys=True) + "\n")
    return expected


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE
    result = make(target)
    print(f"wrote {target}: {len(result['keys'])} keys, {result['audit_rows']} audit rows")  # type: ignore[arg-type]
