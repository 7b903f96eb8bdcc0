"""Audit log: hash chain + KEK-MACed head; every edit, deletion, reorder, insertion detected."""

from __future__ import annotations

import itertools
import json
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelseal._internal.clock import FixedClock
from modelseal.crypto.kek import KekRing, SoftwareKek
from modelseal.crypto.secret import SecretBytes
from modelseal.errors import BackendError
from modelseal.kbs.audit import AuditLog
from modelseal.kbs.db import Database, sqlite_url
from modelseal.protocol.admin import AuditEntryModel, audit_row_hash, verify_audit_chain

KEK = SoftwareKek.generate()


@pytest.fixture
def log(tmp_path: Path) -> Iterator[AuditLog]:
    db = Database(sqlite_url(tmp_path))
    db.create_all()
    audit = AuditLog(db, lambda: KekRing(KEK), clock=FixedClock())
    audit.init_head()
    yield audit
    db.dispose()


def _fill(log: AuditLog, n: int) -> None:
    for i in range(n):
        log.record(
            actor=f"actor-{i}",
            action="key.release",
            key_id=f"models/m/v{i}",
            tee="sample",
            claims_digest="sha256:" + "00" * 32,
            policy_digest="sha256:" + "11" * 32,
            decision="allow" if i % 2 else "deny",
            reasons=[f"reason {i}", "ünïcode ✓"],
        )


def _sql(tmp_path: Path, *statements: str) -> None:
    conn = sqlite3.connect(tmp_path / "kbs.sqlite3")
    for statement in statements:
        conn.execute(statement)
    conn.commit()
    conn.close()


def test_empty_log_verifies(log: AuditLog) -> None:
    result = log.verify()
    assert result.ok
    assert result.rows == 0


def test_chain_links(log: AuditLog) -> None:
    _fill(log, 5)
    rows = log.entries()
    assert [r.seq for r in rows] == [1, 2, 3, 4, 5]
    assert rows[0].prev_hash == "0" * 64
    assert all(b.prev_hash == a.row_hash for a, b in itertools.pairwise(rows))
    assert rows[1].reasons == ("reason 1", "ünïcode ✓")
    assert log.verify().ok
    models = [AuditEntryModel(**r.to_json()) for r in rows]
    assert verify_audit_chain(models).ok
    assert verify_audit_chain(models[2:], start_seq=3, start_prev=rows[1].row_hash).ok


def test_entries_paging(log: AuditLog) -> None:
    _fill(log, 7)
    assert [r.seq for r in log.entries(after=2, limit=3)] == [3, 4, 5]
    assert [r.seq for r in log.entries(after=6)] == [7]


@pytest.mark.parametrize(
    "column",
    ["actor", "action", "key_id", "tee", "claims_digest", "policy_digest", "decision", "time"],
)
def test_edited_field_detected(log: AuditLog, tmp_path: Path, column: str) -> None:
    _fill(log, 6)
    _sql(tmp_path, f"UPDATE ms_audit SET {column} = 'x' WHERE seq = 4")
    result = log.verify()
    assert not result.ok
    assert result.first_bad_seq == 4
    assert "row 4 was modified" in (result.reason or "")


def test_edited_reasons_detected(log: AuditLog, tmp_path: Path) -> None:
    _fill(log, 3)
    _sql(tmp_path, "UPDATE ms_audit SET reasons = '[\"all good\"]' WHERE seq = 2")
    assert log.verify().first_bad_seq == 2


def test_deleted_row_detected(log: AuditLog, tmp_path: Path) -> None:
    _fill(log, 6)
    _sql(tmp_path, "DELETE FROM ms_audit WHERE seq = 3")
    result = log.verify()
    assert not result.ok
    assert result.first_bad_seq == 3
    assert "missing" in (result.reason or "")


def test_deleted_tail_detected(log: AuditLog, tmp_path: Path) -> None:
    _fill(log, 6)
    _sql(tmp_path, "DELETE FROM ms_audit WHERE seq >= 5")
    result = log.verify()
    assert not result.ok
    assert result.first_bad_seq == 5
    assert "truncated" in (result.reason or "")


def test_reordered_rows_detected(log: AuditLog, tmp_path: Path) -> None:
    _fill(log, 5)
    _sql(
        tmp_path,
        "UPDATE ms_audit SET seq = 100 WHERE seq = 2",
        "UPDATE ms_audit SET seq = 2 WHERE seq = 3",
        "UPDATE ms_audit SET seq = 3 WHERE seq = 100",
    )
    result = log.verify()
    assert not result.ok
    assert result.first_bad_seq == 2


def test_rewritten_chain_detected_by_the_head_mac(log: AuditLog, tmp_path: Path) -> None:
    """An attacker who edits a row and recomputes every later hash is still caught."""
    _fill(log, 4)
    rows = [AuditEntryModel(**e.to_json()) for e in log.entries()]

    prev = rows[1].row_hash
    conn = sqlite3.connect(tmp_path / "kbs.sqlite3")
    for entry in rows[2:]:
        fields = entry.model_dump()
        fields["prev_hash"] = prev
        if entry.seq == 3:
            fields["decision"] = "allow"
        new_hash = audit_row_hash(fields)
        conn.execute(
            "UPDATE ms_audit SET decision = ?, prev_hash = ?, row_hash = ? WHERE seq = ?",
            (fields["decision"], prev, new_hash, entry.seq),
        )
        prev = new_hash
    conn.execute("UPDATE ms_audit_head SET row_hash = ? WHERE id = 1", (prev,))
    conn.commit()
    conn.close()
    result = log.verify()
    assert not result.ok
    assert result.first_bad_seq == 4
    assert "head" in (result.reason or "")
    with pytest.raises(BackendError, match="tampered"):
        _fill(log, 1)


def test_inserted_row_detected(log: AuditLog, tmp_path: Path) -> None:
    _fill(log, 3)
    row = log.entries()[-1]

    forged = {**row.to_json(), "seq": 4, "prev_hash": row.row_hash, "actor": "intruder"}
    forged["row_hash"] = audit_row_hash(forged)
    conn = sqlite3.connect(tmp_path / "kbs.sqlite3")
    conn.execute(
        "INSERT INTO ms_audit VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
        (
            4,
            forged["time"],
            forged["actor"],
            forged["action"],
            forged["key_id"],
            forged["tee"],
            forged["claims_digest"],
            forged["policy_digest"],
            forged["decision"],
            json.dumps(forged["reasons"]),
            forged["prev_hash"],
            forged["row_hash"],
        ),
    )
    conn.commit()
    conn.close()
    result = log.verify()
    assert not result.ok
    assert result.first_bad_seq == 4
    assert "outside" in (result.reason or "")


def test_head_under_another_kek_refused(tmp_path: Path, log: AuditLog) -> None:
    _fill(log, 2)
    db = Database(sqlite_url(tmp_path))
    other = AuditLog(db, lambda: KekRing(SoftwareKek.generate()))
    assert not other.verify().ok
    with pytest.raises(BackendError):
        _fill(other, 1)
    db.dispose()


def test_concurrent_writers_threads(log: AuditLog) -> None:
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            _fill(log, 25)
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=writer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    result = log.verify()
    assert result.ok
    assert result.rows == 200


WRITER = """
import sys, time
from pathlib import Path
from modelseal.crypto.kek import Kek, KekRing, SoftwareKek
from modelseal.crypto.secret import SecretBytes
from modelseal.kbs.audit import AuditLog
from modelseal.kbs.db import Database, sqlite_url
base = Path(sys.argv[1])
db = Database(sqlite_url(base))
kek = SoftwareKek(SecretBytes(bytes.fromhex(sys.argv[2])))
log = AuditLog(db, lambda: KekRing(kek))
(base / f"ready-{sys.argv[3]}").touch()
while not (base / "go").exists():  # start together, so the appends really interleave
    time.sleep(0.005)
for i in range(60):
    log.record(actor=sys.argv[3], action="a", key_id=None, tee=None, claims_digest=None,
               policy_digest=None, decision="ok", reasons=[str(i)])
"""


def test_concurrent_writers_processes(tmp_path: Path) -> None:
    material = bytes(range(32))
    kek = SoftwareKek(SecretBytes(material))
    db = Database(sqlite_url(tmp_path))
    db.create_all()
    log = AuditLog(db, lambda: KekRing(kek))
    log.init_head()
    names = ["p0", "p1"]
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), material.hex(), name])
        for name in names
    ]
    deadline = time.monotonic() + 60
    while not all((tmp_path / f"ready-{n}").exists() for n in names):
        assert time.monotonic() < deadline
        assert all(p.poll() is None for p in procs)
        time.sleep(0.01)
    (tmp_path / "go").touch()
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    result = log.verify()
    assert result.ok
    assert result.rows == 120
    actors = [e.actor for e in log.entries(limit=1000)]
    assert sorted(set(actors)) == names
    db.dispose()


def _chain(n: int) -> list[AuditEntryModel]:
    rows: list[AuditEntryModel] = []
    prev = "0" * 64
    for seq in range(1, n + 1):
        fields = {
            "seq": seq,
            "time": f"2026-11-22T00:00:{seq:02d}.000000Z",
            "actor": f"a{seq}",
            "action": "key.release",
            "key_id": "m/k/v1",
            "tee": "tdx",
            "claims_digest": None,
            "policy_digest": None,
            "decision": "allow",
            "reasons": [str(seq)],
            "prev_hash": prev,
        }
        prev = audit_row_hash(fields)
        rows.append(AuditEntryModel(**fields, row_hash=prev))
    return rows


CHAIN = _chain(8)
MUTABLE = ["time", "actor", "action", "key_id", "tee", "decision", "reasons", "prev_hash"]


@settings(deadline=None, max_examples=200)
@given(st.integers(0, 7), st.sampled_from(MUTABLE), st.text(min_size=1, max_size=5))
def test_any_single_edit_is_located(index: int, field: str, junk: str) -> None:
    rows = list(CHAIN)
    value: object = [junk] if field == "reasons" else junk
    if getattr(rows[index], field) == value:
        return
    rows[index] = rows[index].model_copy(update={field: value})
    result = verify_audit_chain(rows)
    assert not result.ok
    assert result.first_bad_seq == index + 1


@settings(deadline=None)
@given(st.integers(0, 7))
def test_any_deletion_is_located(index: int) -> None:
    rows = [r for i, r in enumerate(CHAIN) if i != index]
    result = verify_audit_chain(rows)
    if index == 7:
        assert result.ok  # a cut tail is only visible to the server's MACed head
    else:
        assert not result.ok
        assert result.first_bad_seq == index + 1


@settings(deadline=None)
@given(st.permutations(list(range(8))))
def test_any_reordering_is_detected(order: list[int]) -> None:
    rows = [CHAIN[i] for i in order]
    result = verify_audit_chain(rows)
    assert result.ok == (order == sorted(order))
