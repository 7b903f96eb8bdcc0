"""The KBS transaction model under concurrency, in one process on embedded SQLite.

Key puts, KEK rotations, RCAR session writes and releases run at the same time from many
threads, as the served app runs them (blocking calls in the thread pool). Afterwards a
fresh open of the data directory must hold every acknowledged key with its exact bytes,
no row under a retired KEK, a verifying audit chain with one row per acknowledged release,
and nothing from a rolled-back transaction.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from sqlalchemy import select

from modelseal.crypto.secret import SecretBytes
from modelseal.errors import BackendError
from modelseal.kbs.audit import AuditRow
from modelseal.kbs.sessions import SessionStore
from modelseal.kbs.state import KbsState
from modelseal.keystore.tables import KeyRow
from modelseal.protocol.claims import Claims

POLICY = {"apiVersion": "modelseal/v1", "kind": "ReleasePolicy", "tee": ["sample"]}
SAMPLE = Claims(tee="sample", debug=False, report_data=b"", insecure=True)


def _run(workers: list[threading.Thread]) -> None:
    for t in workers:
        t.start()
    for t in workers:
        t.join(timeout=120)
        assert not t.is_alive()


def test_puts_rotations_sessions_and_releases_at_once(tmp_path: Path) -> None:
    data_dir = tmp_path / "kbs"
    state = KbsState.open(data_dir)
    sessions = SessionStore(state.db, ttl=60)
    state.keys.put("models/hot/v1", None, policy=POLICY, actor="t")
    acked: dict[str, bytes] = {}
    releases: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def putter(n: int) -> None:
        try:
            for i in range(25):
                key_id, dek = f"models/p{n}/v{i}", os.urandom(32)
                state.keys.put(key_id, SecretBytes(dek), policy=POLICY, actor="t")
                with lock:
                    acked[key_id] = dek
        except BaseException as exc:
            errors.append(exc)

    def rotator() -> None:
        try:
            for _ in range(4):
                state.keys.rotate_kek(actor="t")
        except BaseException as exc:
            errors.append(exc)

    def releaser(n: int) -> None:
        try:
            for i in range(30):
                pending = sessions.create("sample", f"nonce-{n}-{i}")
                assert sessions.pending(pending.id) == pending
                sessions.complete(pending, f"token-{n}-{i}", 1e12)
                assert sessions.token_for(pending.id) == f"token-{n}-{i}"
                token_id = f"tok-{n}-{i}"
                state.release("models/hot/v1", SAMPLE, token_id=token_id, requester="r")
                with lock:
                    releases.append(token_id)
        except BaseException as exc:
            errors.append(exc)

    _run(
        [threading.Thread(target=putter, args=(n,)) for n in range(4)]
        + [threading.Thread(target=rotator)]
        + [threading.Thread(target=releaser, args=(n,)) for n in range(8)]
    )
    assert errors == []
    state.close()

    reopened = KbsState.open(data_dir)
    try:
        active = reopened.store.ring.active.id
        assert reopened.store.count_by_kek() == {active: len(acked) + 1}
        for key_id, dek in acked.items():
            assert reopened.store.load(key_id).dek.reveal() == dek
        verification = reopened.audit.verify()
        assert verification.ok, verification
        with reopened.db.read() as s:
            reasons = s.scalars(
                select(AuditRow.reasons).where(
                    AuditRow.action == "key.release", AuditRow.decision == "allow"
                )
            ).all()
        released = {r.split('"token_id=')[1].split('"')[0] for r in reasons}
        assert released == set(releases)
        assert len(reasons) == len(releases) == 8 * 30
    finally:
        reopened.close()


def _add_then_fail(state: KbsState, key_id: str) -> None:
    with state.db.begin() as s:
        s.add(
            KeyRow(
                key_id=key_id,
                kek_id="k",
                wrapped=b"x",
                state="active",
                size=32,
                created_at=0.0,
                updated_at=0.0,
                mac="m",
            )
        )
        s.flush()
        raise RuntimeError("abort")


def test_rolled_back_write_leaves_nothing_while_others_commit(tmp_path: Path) -> None:
    """A transaction that fails is rolled back whole, even with session writes committing
    on other threads at the same moment (they never share its connection)."""
    state = KbsState.open(tmp_path / "kbs")
    sessions = SessionStore(state.db, ttl=60)
    stop = threading.Event()

    def churn() -> None:
        while not stop.is_set():
            sessions.burn(sessions.create("sample", "n").id)

    churners = [threading.Thread(target=churn) for _ in range(4)]
    for t in churners:
        t.start()
    try:
        for i in range(20):
            with pytest.raises(RuntimeError):
                _add_then_fail(state, f"models/gone/v{i}")
    finally:
        stop.set()
        for t in churners:
            t.join()
    with state.db.read() as s:
        assert (
            s.scalars(select(KeyRow.key_id).where(KeyRow.key_id.like("models/gone/%"))).all() == []
        )
    state.close()


def test_storage_failure_is_a_backend_error(tmp_path: Path) -> None:
    """A driver error inside a write transaction surfaces as BackendError (HTTP 503)."""
    state = KbsState.open(tmp_path / "kbs")
    try:
        with pytest.raises(BackendError), state.db.write() as conn:
            conn.exec_driver_sql("INSERT INTO no_such_table VALUES (1)")
    finally:
        state.close()


def test_a_replica_without_the_rotated_kek_answers_unavailable(tmp_path: Path) -> None:
    """A replica that has not been given the rotated ``kek`` file refuses writes with
    BackendError (503: install the file), not a client error; with the file it works."""
    import shutil

    first = KbsState.open(tmp_path / "a")
    url = f"sqlite:///{first.data_dir / 'kbs.sqlite3'}"
    second_dir = tmp_path / "b"
    second_dir.mkdir(mode=0o700)
    for name in ("kek", "admin-credential"):
        shutil.copy2(first.data_dir / name, second_dir / name)
    second = KbsState.open(second_dir, database_url=url)
    try:
        first.keys.rotate_kek(actor="t")
        with pytest.raises(BackendError, match="install the rotated kek file"):
            second.keys.put("models/r/v1", None, policy=POLICY, actor="t")
        shutil.copy2(first.data_dir / "kek", second_dir / "kek")
        second.keys.put("models/r/v1", None, policy=POLICY, actor="t")
        assert second.audit.verify().ok
    finally:
        first.close()
        second.close()
