"""KbsState.open: data dir layout, secret files, permissions, and the release contract."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from modelseal._internal.clock import FixedClock
from modelseal.crypto.secret import SecretBytes
from modelseal.errors import ConfigError, KeyNotFound, PolicyDenied
from modelseal.kbs.state import KbsState
from modelseal.protocol.claims import Claims

POLICY = {"apiVersion": "modelseal/v1", "kind": "ReleasePolicy", "tee": ["sample"]}
SAMPLE = Claims(tee="sample", debug=False, report_data=b"", tcb_status="UpToDate", insecure=True)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_open_creates_private_layout(tmp_path: Path) -> None:
    data = tmp_path / "kbs"
    state = KbsState.open(data)
    try:
        assert _mode(data) == 0o700
        assert _mode(data / "kek") == 0o600
        assert _mode(data / "admin-credential") == 0o600
        assert (data / "kek").stat().st_size == 32
        assert (data / "kbs.sqlite3").exists()
        assert state.data_dir == data
    finally:
        state.close()


def test_secret_files_are_generated_once(tmp_path: Path) -> None:
    KbsState.open(tmp_path).close()
    kek, cred = (tmp_path / "kek").read_bytes(), (tmp_path / "admin-credential").read_bytes()
    KbsState.open(tmp_path).close()
    assert (tmp_path / "kek").read_bytes() == kek
    assert (tmp_path / "admin-credential").read_bytes() == cred


def test_open_tightens_loose_data_dir(tmp_path: Path) -> None:
    data = tmp_path / "kbs"
    data.mkdir(mode=0o755)
    os.chmod(data, 0o755)
    KbsState.open(data).close()
    assert _mode(data) == 0o700


@pytest.mark.parametrize("name", ["kek", "admin-credential"])
def test_refuses_group_readable_secret(tmp_path: Path, name: str) -> None:
    KbsState.open(tmp_path).close()
    os.chmod(tmp_path / name, 0o640)
    with pytest.raises(ConfigError, match="permissions 0640"):
        KbsState.open(tmp_path)


def test_refuses_malformed_kek(tmp_path: Path) -> None:
    kek = tmp_path / "kek"
    fd = os.open(kek, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"short")
    os.close(fd)
    with pytest.raises(ConfigError, match="malformed"):
        KbsState.open(tmp_path)


def test_refuses_a_kek_that_does_not_match_the_stored_keys(tmp_path: Path) -> None:
    state = KbsState.open(tmp_path)
    state.keys.put("models/m/v1", None, policy=POLICY, actor="t")
    state.close()
    (tmp_path / "kek").unlink()
    with pytest.raises(ConfigError, match="start the KBS with the KEK file"):
        KbsState.open(tmp_path)  # a fresh KEK would be generated; refuse to serve


def test_release_allow_deny_unknown_revoked(tmp_path: Path) -> None:
    clock = FixedClock()
    state = KbsState.open(tmp_path, clock=clock)
    try:
        dek = SecretBytes(os.urandom(32))
        state.keys.put("models/m/v1", dek, policy=POLICY, actor="admin:t")
        state.keys.put("models/m/nopolicy", None, actor="admin:t")
        got = state.release("models/m/v1", SAMPLE, token_id="tok1", requester="10.0.0.1")
        assert got == dek
        secure = Claims(tee="sample", debug=False, report_data=b"")
        with pytest.raises(PolicyDenied) as denied:
            state.release("models/m/v1", secure, token_id="tok2", requester="10.0.0.1")
        assert "insecure" in denied.value.reasons[0]
        assert str(denied.value) == "denied"
        with pytest.raises(PolicyDenied):
            state.release("models/m/nopolicy", SAMPLE, token_id="tok3", requester="r")
        with pytest.raises(KeyNotFound):
            state.release("models/m/none", SAMPLE, token_id="tok4", requester="r")
        with pytest.raises(KeyNotFound):
            state.release("../../etc", SAMPLE, token_id="tok5", requester="r")
        state.keys.revoke("models/m/v1", actor="admin:t")
        with pytest.raises(PolicyDenied) as revoked:
            state.release("models/m/v1", SAMPLE, token_id="tok6", requester="r")
        assert revoked.value.reasons == ("key is revoked",)
        rows = [e for e in state.audit.entries() if e.action == "key.release"]
        assert [e.decision for e in rows] == ["allow", "deny", "deny", "deny", "deny", "deny"]
        assert rows[0].reasons[0] == "token_id=tok1"
        assert rows[0].actor == "10.0.0.1"
        assert rows[0].tee == "sample"
        assert rows[0].claims_digest is not None
        assert rows[0].claims_digest.startswith("sha256:")
        assert rows[0].policy_digest is not None
        assert rows[4].key_id is None  # malformed path is never echoed as a key id
        assert state.audit.verify().ok
    finally:
        state.close()


def test_transfer_nonce_single_use_and_ttl(tmp_path: Path) -> None:
    from modelseal.errors import TokenError

    clock = FixedClock()
    state = KbsState.open(tmp_path, clock=clock)
    try:
        n = state.issue_transfer_nonce("models/m/v1", ttl=60)
        with pytest.raises(TokenError):
            state.consume_transfer_nonce(n.value, "models/m/other")
        state.consume_transfer_nonce(n.value, "models/m/v1")
        with pytest.raises(TokenError):
            state.consume_transfer_nonce(n.value, "models/m/v1")
        late = state.issue_transfer_nonce("models/m/v1", ttl=60)
        clock.advance(61)
        with pytest.raises(TokenError):
            state.consume_transfer_nonce(late.value, "models/m/v1")
    finally:
        state.close()


def test_no_release_when_the_audit_row_cannot_be_written(tmp_path: Path) -> None:
    import sqlite3

    from modelseal.errors import BackendError

    state = KbsState.open(tmp_path)
    try:
        state.keys.put("models/m/v1", None, policy=POLICY, actor="t")
        rows = len(state.audit.entries())
        db = sqlite3.connect(tmp_path / "kbs.sqlite3")
        db.execute("UPDATE ms_audit_head SET mac = 'forged' WHERE id = 1")
        db.commit()
        db.close()
        with pytest.raises(BackendError, match="head failed verification"):
            state.release("models/m/v1", SAMPLE, token_id="t", requester="r")
        assert len(state.audit.entries()) == rows
    finally:
        state.close()


def test_concurrent_releases_keep_one_chain(tmp_path: Path) -> None:
    import threading

    state = KbsState.open(tmp_path)
    try:
        dek = SecretBytes(os.urandom(32))
        state.keys.put("models/m/v1", dek, policy=POLICY, actor="t")
        errors: list[BaseException] = []

        def work() -> None:
            try:
                for i in range(20):
                    path = "models/m/v1" if i % 4 else "models/m/missing"
                    try:
                        assert state.release(path, SAMPLE, token_id="t", requester="r") == dek
                    except KeyNotFound:
                        assert path.endswith("missing")
            except BaseException as exc:  # asserted below
                errors.append(exc)

        threads = [threading.Thread(target=work) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        result = state.audit.verify()
        assert result.ok
        assert result.rows == 1 + 120
    finally:
        state.close()


def test_unknown_and_denied_keys_take_the_same_path(tmp_path: Path) -> None:
    """No existence oracle on the state side: an unknown key and a policy denial are each
    ONE transaction (the same round trips to the database) with ONE audit row of the same
    shape, and neither error carries the key id or a reason."""
    from sqlalchemy import event

    state = KbsState.open(tmp_path)
    try:
        state.keys.put("models/m/v1", None, policy=POLICY, actor="t")
        secure = Claims(tee="sample", debug=False, report_data=b"")
        transactions: list[int] = []
        event.listen(state.db.engine, "begin", lambda conn: transactions.append(1))
        seen: dict[str, tuple[int, Exception, object]] = {}
        for path in ("models/m/v1", "models/m/missing", "../../x"):
            before, rows = len(transactions), len(state.audit.entries())
            with pytest.raises((PolicyDenied, KeyNotFound)) as err:
                state.release(path, secure, token_id="t", requester="r")
            spent = len(transactions) - before - 1  # minus the entries() read above
            new_rows = state.audit.entries(after=rows)
            assert len(new_rows) == 1
            row = new_rows[0]
            shape = (row.actor, row.action, row.tee, row.claims_digest, row.decision)
            seen[path] = (spent, err.value, shape)
        spent_counts = {v[0] for v in seen.values()}
        assert spent_counts == {1}, seen
        assert len({v[2] for v in seen.values()}) == 1
        for _, exc, _ in seen.values():
            assert "models/m" not in str(exc)
            assert str(exc) in ("denied", "no such key")
        assert state.audit.verify().ok
    finally:
        state.close()
