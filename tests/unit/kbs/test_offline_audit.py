"""Reading and verifying a KBS data directory's audit log without a running KBS."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from modelseal.errors import ConfigError, IntegrityError
from modelseal.kbs import state
from modelseal.kbs.state import KbsState, offline_audit_entries, offline_audit_verify


def _data_dir(tmp_path: Path, rows: int) -> Path:
    data_dir = tmp_path / "kbs"
    kbs = KbsState.open(data_dir)
    try:
        for i in range(rows):
            kbs.audit.record(
                actor=f"actor-{i}",
                action="key.release",
                key_id=f"models/m/v{i}",
                tee="sample",
                claims_digest=None,
                policy_digest=None,
                decision="allow",
                reasons=[],
            )
    finally:
        kbs.close()
    return data_dir


def test_entries_page_through_the_whole_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = _data_dir(tmp_path, 7)
    monkeypatch.setattr(state, "_AUDIT_PAGE", 3)  # several full pages and a short one
    every = offline_audit_entries(data_dir)
    assert [e.actor for e in every] == [f"actor-{i}" for i in range(7)]
    assert [e.seq for e in offline_audit_entries(data_dir, after=every[1].seq, limit=4)] == [
        e.seq for e in every[2:6]
    ]
    assert offline_audit_entries(data_dir, limit=3) == every[:3]  # a limit on a page edge
    assert offline_audit_verify(data_dir).ok


def test_reading_creates_nothing(tmp_path: Path) -> None:
    data_dir = _data_dir(tmp_path, 1)
    before = sorted(p.name for p in data_dir.iterdir())
    offline_audit_entries(data_dir)
    offline_audit_verify(data_dir)
    after = sorted(p.name for p in data_dir.iterdir() if not p.name.endswith(("-wal", "-shm")))
    assert after == [name for name in before if not name.endswith(("-wal", "-shm"))]


def test_edited_row_is_a_failed_verdict(tmp_path: Path) -> None:
    data_dir = _data_dir(tmp_path, 3)
    conn = sqlite3.connect(data_dir / "kbs.sqlite3")
    conn.execute("UPDATE ms_audit SET actor = 'someone-else' WHERE seq = 2")
    conn.commit()
    conn.close()
    verdict = offline_audit_verify(data_dir)
    assert not verdict.ok
    assert verdict.first_bad_seq == 2


def test_not_a_data_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no kek file"):
        offline_audit_entries(tmp_path)
    (tmp_path / "kek").write_bytes(b"\0" * 32)
    with pytest.raises(ConfigError, match=r"has no kbs\.sqlite3"):
        offline_audit_verify(tmp_path)


def test_overwritten_database_is_an_integrity_failure(tmp_path: Path) -> None:
    data_dir = _data_dir(tmp_path, 1)
    for suffix in ("-wal", "-shm"):
        (data_dir / f"kbs.sqlite3{suffix}").unlink(missing_ok=True)
    (data_dir / "kbs.sqlite3").write_bytes(b"not a database " * 512)
    with pytest.raises(IntegrityError, match="not a readable SQLite database"):
        offline_audit_entries(data_dir)
