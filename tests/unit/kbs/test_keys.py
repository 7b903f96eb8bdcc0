"""KeyService: admin operations leave audit rows; KEK rotation is atomic and crash-safe."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from modelseal.crypto.kek import Kek, KekRing
from modelseal.crypto.secret import SecretBytes
from modelseal.errors import ConfigError
from modelseal.kbs.keys import KekFiles
from modelseal.kbs.state import KbsState
from modelseal.policy import PolicyInvalid
from modelseal.protocol.claims import Claims

POLICY = {"apiVersion": "modelseal/v1", "kind": "ReleasePolicy", "tee": ["sample"]}


def test_admin_actions_are_audited(tmp_path: Path) -> None:
    state = KbsState.open(tmp_path)
    try:
        state.keys.put("m/k/v1", None, actor="admin:a")
        state.keys.put("m/k/v2", SecretBytes(os.urandom(32)), policy=POLICY, actor="admin:b")
        policy = state.keys.set_policy("m/k/v1", POLICY, actor="admin:a")
        assert state.keys.get_policy("m/k/v1") == policy
        state.keys.set_model_digest("m/k/v1", "sha256:" + "00" * 32, actor="admin:a")
        state.keys.clear_policy("m/k/v1", actor="admin:a")
        assert state.keys.get_policy("m/k/v1") is None
        state.keys.revoke("m/k/v1", actor="admin:a")
        state.keys.delete("m/k/v1", actor="admin:a")
        actions = [(e.actor, e.action, e.key_id) for e in state.audit.entries()]
        assert actions == [
            ("admin:a", "key.generate", "m/k/v1"),
            ("admin:b", "key.import", "m/k/v2"),
            ("admin:a", "policy.set", "m/k/v1"),
            ("admin:a", "model.bind", "m/k/v1"),
            ("admin:a", "policy.clear", "m/k/v1"),
            ("admin:a", "key.revoke", "m/k/v1"),
            ("admin:a", "key.delete", "m/k/v1"),
        ]
        assert state.audit.entries()[2].policy_digest == policy.digest
    finally:
        state.close()


def test_invalid_policy_is_rejected_before_storing(tmp_path: Path) -> None:
    state = KbsState.open(tmp_path)
    try:
        with pytest.raises(PolicyInvalid):
            state.keys.put("m/k/v1", None, policy={**POLICY, "extra": 1}, actor="a")
        assert state.keys.list_keys() == []
        assert state.audit.entries() == []
    finally:
        state.close()


def test_rotation_survives_restart(tmp_path: Path) -> None:
    state = KbsState.open(tmp_path)
    dek = SecretBytes(os.urandom(32))
    state.keys.put("m/k/v1", dek, actor="a")
    result = state.keys.rotate_kek(actor="a")
    assert result.rewrapped == 1
    state.close()
    reopened = KbsState.open(tmp_path)
    try:
        assert reopened.store.ring.active.id == result.new_kek_id
        assert reopened.store.load("m/k/v1").dek == dek
        assert reopened.audit.verify().ok
    finally:
        reopened.close()


def test_interrupted_rotation_before_rewrap_is_finished_at_start(tmp_path: Path) -> None:
    state = KbsState.open(tmp_path)
    dek = SecretBytes(os.urandom(32))
    state.keys.put("m/k/v1", dek, actor="a")
    old_id = state.store.ring.active.id
    state.close()
    # crash right after kek.next was written
    nxt = KekFiles(tmp_path).create_next()
    reopened = KbsState.open(tmp_path)
    try:
        assert not (tmp_path / "kek.next").exists()
        assert reopened.store.ring.active.id == nxt.id != old_id
        assert reopened.store.count_by_kek() == {nxt.id: 1}
        assert reopened.store.load("m/k/v1").dek == dek
        last = reopened.audit.entries()[-1]
        assert last.action == "kek.rotate"
        assert "resumed at start-up" in last.reasons
        assert reopened.audit.verify().ok
    finally:
        reopened.close()


def test_interrupted_rotation_after_commit_is_finished_at_start(tmp_path: Path) -> None:
    state = KbsState.open(tmp_path)
    dek = SecretBytes(os.urandom(32))
    state.keys.put("m/k/v1", dek, actor="a")
    files = KekFiles(tmp_path)
    new = files.create_next()
    state.store.ring = KekRing(new, [*state.store.ring])
    state.store.rewrap_all(new)  # committed, but kek.next was never promoted (crash)
    state.audit.record(
        actor="a",
        action="x",
        key_id=None,
        tee=None,
        claims_digest=None,
        policy_digest=None,
        decision="ok",
        reasons=[],
    )
    state.close()
    reopened = KbsState.open(tmp_path)
    try:
        assert reopened.store.ring.active.id == new.id
        assert reopened.store.load("m/k/v1").dek == dek
        assert reopened.audit.verify().ok
    finally:
        reopened.close()


def test_old_kek_cannot_read_after_rotation(tmp_path: Path) -> None:
    state = KbsState.open(tmp_path)
    old = (tmp_path / "kek").read_bytes()
    state.keys.put("m/k/v1", None, actor="a")
    state.keys.rotate_kek(actor="a")
    state.close()
    fd = os.open(tmp_path / "kek", os.O_WRONLY | os.O_TRUNC)
    os.write(fd, old)
    os.close(fd)
    with pytest.raises(ConfigError, match="KEK file"):
        KbsState.open(tmp_path)


def test_rotation_keeps_kek_ids_distinct(tmp_path: Path) -> None:
    state = KbsState.open(tmp_path)
    try:
        ids = {state.store.ring.active.id}
        for _ in range(3):
            ids.add(state.keys.rotate_kek(actor="a").new_kek_id)
        assert len(ids) == 4
        assert isinstance(state.store.ring.active, Kek)
    finally:
        state.close()


def test_rotation_concurrent_with_puts_loses_no_key(tmp_path: Path) -> None:
    import threading

    state = KbsState.open(tmp_path)
    try:
        errors: list[BaseException] = []

        def put_many(prefix: str) -> None:
            try:
                for i in range(15):
                    state.keys.put(f"m/{prefix}/v{i}", None, actor="a")
            except BaseException as exc:  # asserted below
                errors.append(exc)

        def rotate() -> None:
            try:
                for _ in range(3):
                    state.keys.rotate_kek(actor="a")
            except BaseException as exc:  # asserted below
                errors.append(exc)

        threads = [threading.Thread(target=put_many, args=(p,)) for p in "abc"]
        threads.append(threading.Thread(target=rotate))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        active = state.store.ring.active.id
        assert state.store.count_by_kek() == {active: 45}
        for record in state.keys.list_keys():
            assert len(state.store.load(record.key_id).dek) == 32
        assert state.audit.verify().ok
    finally:
        state.close()


def test_two_workers_on_one_data_dir_follow_a_rotation(tmp_path: Path) -> None:
    """`kbs serve --workers N`: each worker has its own KbsState over the same directory."""
    a = KbsState.open(tmp_path)
    b = KbsState.open(tmp_path)
    try:
        dek = SecretBytes(os.urandom(32))
        a.keys.put("m/k/v1", dek, policy=POLICY, actor="a")
        sample = Claims(tee="sample", debug=False, report_data=b"", insecure=True)
        assert b.release("m/k/v1", sample, token_id="t", requester="r") == dek
        new_id = a.keys.rotate_kek(actor="a").new_kek_id
        # worker b never saw the rotation: it reloads the new KEK from disk when needed
        assert b.release("m/k/v1", sample, token_id="t", requester="r") == dek
        b.keys.put("m/k/v2", None, actor="b")
        assert b.store.count_by_kek() == {new_id: 2}
        assert a.store.load("m/k/v2").record.kek_id == new_id
        b.keys.rotate_kek(actor="b")
        assert a.release("m/k/v1", sample, token_id="t", requester="r") == dek
        assert a.audit.verify().ok
        assert b.audit.verify().ok
    finally:
        a.close()
        b.close()


def test_failed_rotation_changes_nothing(tmp_path: Path) -> None:
    import sqlite3

    from modelseal.errors import DecryptionError

    state = KbsState.open(tmp_path)
    state.keys.put("m/k/v1", None, actor="a")
    state.keys.put("m/k/v2", None, actor="a")
    kek_before = (tmp_path / "kek").read_bytes()
    db = sqlite3.connect(tmp_path / "kbs.sqlite3")
    db.execute("UPDATE ms_keys SET size = 16 WHERE key_id = 'm/k/v2'")
    db.commit()
    db.close()
    with pytest.raises(DecryptionError):
        state.keys.rotate_kek(actor="a")
    assert not (tmp_path / "kek.next").exists()
    assert (tmp_path / "kek").read_bytes() == kek_before
    assert len(state.store.load("m/k/v1").dek) == 32
    state.close()
    KbsState.open(tmp_path).close()


def _forms(secret: bytes) -> list[bytes]:
    import base64

    return [
        secret,
        secret.hex().encode(),
        secret.hex().upper().encode(),
        base64.b64encode(secret),
        base64.urlsafe_b64encode(secret).rstrip(b"="),
    ]


def test_no_secret_at_rest_in_the_database_or_in_any_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """DEKs (imported and generated), KEKs and the admin credential never appear in any
    encoding in the database files (incl. WAL) or in a log record, across import,
    release, denial, a conflicting re-import, rotation and restart."""
    import logging

    from modelseal.errors import PolicyDenied

    caplog.set_level(logging.DEBUG)
    data = tmp_path / "kbs"
    state = KbsState.open(data)
    secrets = [(data / "kek").read_bytes(), (data / "admin-credential").read_bytes()]
    try:
        imported = os.urandom(32)
        state.keys.put("m/k/imported", SecretBytes(imported), policy=POLICY, actor="admin:a")
        state.keys.put("m/k/generated", None, policy=POLICY, actor="admin:a")
        generated = state.store.load("m/k/generated").dek.reveal()
        claims = Claims(tee="sample", debug=False, report_data=b"", insecure=True)
        assert state.release("m/k/imported", claims, token_id="t", requester="r").reveal() == (
            imported
        )
        with pytest.raises(PolicyDenied):
            state.release(
                "m/k/generated",
                Claims(tee="tdx", debug=True, report_data=b""),
                token_id="t",
                requester="r",
            )
        with pytest.raises(ConfigError):
            state.keys.put("m/k/imported", SecretBytes(os.urandom(32)), actor="admin:a")
        state.keys.rotate_kek(actor="admin:a")
        secrets.append((data / "kek").read_bytes())
        files = {p: p.read_bytes() for p in data.iterdir() if p.name.startswith("kbs.sqlite3")}
        assert files, "the database files were not found"
    finally:
        state.close()
    KbsState.open(data).close()
    files.update({p: p.read_bytes() for p in data.iterdir() if p.name.startswith("kbs.sqlite3")})
    logged = (caplog.text + "".join(str(r.args) for r in caplog.records)).encode("utf-8", "replace")
    for secret in [imported, generated, *secrets]:
        for form in _forms(secret):
            for path, content in files.items():
                assert form not in content, path
            assert form not in logged


def test_admin_change_and_its_audit_row_are_one_transaction(tmp_path: Path) -> None:
    """When the audit row cannot be written (here: a forged head), the change it would
    record is rolled back too: no unaudited key, policy, revocation or deletion."""
    import sqlite3

    from modelseal.errors import BackendError

    state = KbsState.open(tmp_path)
    try:
        state.keys.put("m/k/v1", None, actor="admin:a")
        before = (state.keys.list_keys(), state.audit.entries())
        db = sqlite3.connect(tmp_path / "kbs.sqlite3")
        db.execute("UPDATE ms_audit_head SET mac = 'forged' WHERE id = 1")
        db.commit()
        db.close()
        attempts = [
            lambda: state.keys.put("m/k/v2", None, actor="admin:a"),
            lambda: state.keys.set_policy("m/k/v1", POLICY, actor="admin:a"),
            lambda: state.keys.set_model_digest("m/k/v1", "sha256:" + "00" * 32, actor="a"),
            lambda: state.keys.revoke("m/k/v1", actor="admin:a"),
            lambda: state.keys.delete("m/k/v1", actor="admin:a"),
            lambda: state.keys.rotate_kek(actor="admin:a"),
        ]
        for attempt in attempts:
            with pytest.raises(BackendError, match="head failed verification"):
                attempt()
        assert (state.keys.list_keys(), state.audit.entries()) == before
        assert state.keys.get_policy("m/k/v1") is None
        assert not (tmp_path / "kek.next").exists()
    finally:
        state.close()


def test_revocation_made_final_by_a_rotation_survives_a_row_rollback(tmp_path: Path) -> None:
    """A database writer who saved a key's row from before its revocation and writes it
    back gets nothing once the KEK was rotated after the revocation: the old row names,
    and is MACed and wrapped under, a KEK the KBS no longer holds."""
    import sqlite3

    from modelseal.errors import PolicyDenied

    state = KbsState.open(tmp_path)
    try:
        state.keys.put("m/k/v1", SecretBytes(os.urandom(32)), policy=POLICY, actor="admin:a")
        db = sqlite3.connect(tmp_path / "kbs.sqlite3")
        saved = db.execute("SELECT * FROM ms_keys WHERE key_id = 'm/k/v1'").fetchone()
        state.keys.revoke("m/k/v1", actor="admin:a")
        state.keys.delete("m/k/v1", actor="admin:a")
        state.keys.rotate_kek(actor="admin:a")
        db.execute(f"INSERT INTO ms_keys VALUES ({', '.join('?' * len(saved))})", saved)
        db.commit()
        db.close()
        claims = Claims(tee="sample", debug=False, report_data=b"", insecure=True)
        with pytest.raises(PolicyDenied) as denied:  # the usual 403, not a 500
            state.release("m/k/v1", claims, token_id="t", requester="r")
        assert str(denied.value) == "denied"
        last = state.audit.entries(after=0, limit=1000)[-1]
        assert (last.action, last.key_id, last.decision) == ("key.release", "m/k/v1", "deny")
        assert "does not hold" in last.reasons[1]
    finally:
        state.close()
