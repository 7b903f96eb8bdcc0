"""The pre-migration KBS database fixture (tests/vectors/kbs-db) and checks of its contents.

Shared by the SQLite, PostgreSQL and process-level migration tests.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from functools import lru_cache
from pathlib import Path
from typing import Any

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import MetaData

import modelseal.kbs.sessions  # noqa: F401  (registers its table on Base.metadata)
from modelseal.kbs import migrations, schema
from modelseal.kbs.db import Base, Database
from modelseal.kbs.state import KbsState
from modelseal.keystore.tables import KeystoreBase
from modelseal.protocol.claims import Claims

FIXTURE = Path(__file__).resolve().parents[2] / "vectors" / "kbs-db"
#: A test-only revision 0003 after the shipped 0002 (see extra_revisions/).
EXTRA_REVISIONS = Path(__file__).resolve().with_name("extra_revisions")
SAMPLE = Claims(tee="sample", debug=False, report_data=b"", insecure=True)


def expected() -> dict[str, Any]:
    value: dict[str, Any] = json.loads((FIXTURE / "expected.json").read_text())
    return value


def copy_fixture(dest: Path) -> Path:
    """A private copy of the fixture's data directory (git does not keep modes 0700/0600)."""
    shutil.copytree(FIXTURE / "data", dest)
    os.chmod(dest, 0o700)
    for child in dest.iterdir():
        os.chmod(child, 0o600)
    return dest


@lru_cache(maxsize=1)
def scripts_with_extra() -> ScriptDirectory:
    """The shipped revisions plus the test-only 0003 (patched over ``schema.scripts``)."""
    return ScriptDirectory(
        str(schema.MIGRATIONS_DIR),
        version_locations=[str(schema.MIGRATIONS_DIR / "versions"), str(EXTRA_REVISIONS)],
    )


def use_extra_revision(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the test-only 0003 this code's head, for Alembic and for the start's check."""
    monkeypatch.setattr(schema, "scripts", scripts_with_extra)
    monkeypatch.setattr(migrations, "HEAD", "0003")


def model_metadata() -> MetaData:
    """Every table the code's models declare (KBS base plus the key store's base)."""
    meta = MetaData()
    for source in (Base.metadata, KeystoreBase.metadata):
        for table in source.tables.values():
            table.to_metadata(meta)
    return meta


def check_contents(state: KbsState, exp: dict[str, Any]) -> None:
    """Every key reads back with its exact DEK and metadata; the audit chain is intact."""
    records = state.store.list_keys()
    assert [r.key_id for r in records] == [k["key_id"] for k in exp["keys"]]
    for want in exp["keys"]:
        loaded = state.store.load(want["key_id"])
        try:
            assert loaded.dek.reveal().hex() == want["dek_hex"], want["key_id"]
        finally:
            loaded.dek.wipe()
        got = loaded.record
        assert (got.state, got.kek_id, got.size) == (want["state"], want["kek_id"], want["size"])
        assert got.model_digest == want["model_digest"]
        assert got.policy_digest == want["policy_digest"]
        assert loaded.policy_json == want["policy_json"]
        if want["policy_json"] is not None:
            policy = state.keys.get_policy(want["key_id"])
            assert policy is not None
            assert policy.digest == want["policy_digest"]
    verdict = state.audit.verify()
    assert verdict.ok, verdict
    assert verdict.rows == exp["audit_rows"]
    entries = state.audit.entries(limit=1000)
    assert [e.action for e in entries] == exp["audit_actions"]
    assert entries[-1].row_hash == exp["audit_head_hash"]
    assert state.audit.head_kek_id() == exp["kek_id"]


def check_still_serves(state: KbsState, exp: dict[str, Any]) -> None:
    """After the upgrade the KBS releases a fixture key and extends the same chain."""
    dek = state.release(
        "models/fixture/imported-256", SAMPLE, token_id="after-upgrade", requester="test"
    )
    try:
        assert dek.reveal() == bytes(range(32))
    finally:
        dek.wipe()
    verdict = state.audit.verify()
    assert verdict.ok, verdict
    assert verdict.rows == exp["audit_rows"] + 1


def open_concurrently(dbs: list[Database], data_dir: Path, database_url: str | None) -> None:
    """Run ``schema.ensure_current`` on every database at once (workers or replicas starting
    together on an empty database): all must start and the schema must end at head."""
    errors: list[BaseException] = []

    def start(db: Database) -> None:
        try:
            schema.ensure_current(db, data_dir, database_url=database_url)
        except BaseException as exc:  # asserted below
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(db,)) for db in dbs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert errors == []
        assert schema.status(dbs[0]).current
    finally:
        for db in dbs:
            db.dispose()
