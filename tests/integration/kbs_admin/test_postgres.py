"""The same KBS state code on PostgreSQL, on the shared throwaway server (``pg_url`` in
tests/conftest.py: one fresh database per test; skips without the server binaries)."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pytest

from modelseal.crypto.secret import SecretBytes
from modelseal.errors import PolicyDenied
from modelseal.kbs.state import KbsState
from modelseal.protocol.claims import Claims

pytestmark = pytest.mark.postgres

POLICY = {"apiVersion": "modelseal/v1", "kind": "ReleasePolicy", "tee": ["sample"]}
SAMPLE = Claims(tee="sample", debug=False, report_data=b"", insecure=True)


def test_state_on_postgres(pg_url: str, tmp_path: Path) -> None:
    state = KbsState.open(tmp_path / "kbs", database_url=pg_url)
    try:
        dek = SecretBytes(os.urandom(32))
        state.keys.put("models/pg/v1", dek, policy=POLICY, actor="t")
        assert state.release("models/pg/v1", SAMPLE, token_id="t", requester="r") == dek
        state.keys.revoke("models/pg/v1", actor="t")
        with pytest.raises(PolicyDenied):
            state.release("models/pg/v1", SAMPLE, token_id="t", requester="r")
        nonce = state.issue_transfer_nonce("models/pg/v1")
        state.consume_transfer_nonce(nonce.value, "models/pg/v1")
        assert state.keys.rotate_kek(actor="t").rewrapped == 1
        assert state.audit.verify().ok
    finally:
        state.close()


def test_replicas_share_one_audit_chain(pg_url: str, tmp_path: Path) -> None:
    """Two KBS replicas (same KEK and credential, one database) append concurrently."""
    first = KbsState.open(tmp_path / "a", database_url=pg_url)
    second_dir = tmp_path / "b"
    second_dir.mkdir(mode=0o700)
    for name in ("kek", "admin-credential"):
        shutil.copy2(first.data_dir / name, second_dir / name)
    second = KbsState.open(second_dir, database_url=pg_url)
    try:
        first.keys.put("models/pg/shared", None, policy=POLICY, actor="t")
        before = first.audit.verify().rows
        errors: list[BaseException] = []

        def work(state: KbsState) -> None:
            try:
                for _ in range(25):
                    state.release("models/pg/shared", SAMPLE, token_id="t", requester="r")
            except BaseException as exc:  # asserted below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(s,)) for s in (first, second) * 3]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        result = second.audit.verify()
        assert result.ok
        assert result.rows == before + 150
    finally:
        first.close()
        second.close()
