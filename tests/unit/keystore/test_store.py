"""Key store: wrapped at rest, conflicts and idempotence, row MACs, one-transaction re-wrap."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelseal.crypto.kek import KekRing, SoftwareKek
from modelseal.crypto.secret import SecretBytes
from modelseal.errors import ConfigError, DecryptionError, KeyNotFound
from modelseal.kbs.db import Database, sqlite_url
from modelseal.keystore.paths import is_valid_key_id, validate_key_id, validate_model_digest
from modelseal.keystore.store import KeyConflict, KeyStore, create_tables

DIGEST = "sha256:" + "ab" * 32


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(sqlite_url(tmp_path))
    create_tables(database.engine)
    yield database
    database.dispose()


@pytest.fixture
def store(db: Database) -> KeyStore:
    return KeyStore(db.begin, KekRing(SoftwareKek.generate()))


def _sql(tmp_path: Path, statement: str, *args: object) -> None:
    conn = sqlite3.connect(tmp_path / "kbs.sqlite3")
    conn.execute(statement, args)
    conn.commit()
    conn.close()


def test_put_and_load(store: KeyStore) -> None:
    dek = SecretBytes(os.urandom(32))
    record, created = store.put("models/m/v1", dek, model_digest=DIGEST.upper())
    assert created
    assert record.state == "active"
    assert record.size == 32
    assert record.model_digest == DIGEST
    assert record.kek_id == store.ring.active.id
    loaded = store.load("models/m/v1")
    assert loaded.dek == dek
    assert loaded.policy_json is None
    assert store.get("models/m/v1") == record
    assert [r.key_id for r in store.list_keys()] == ["models/m/v1"]
    assert store.list_keys(model_digest=DIGEST) == [record]
    assert store.list_keys(model_digest="sha256:" + "00" * 32) == []


def test_generate(store: KeyStore) -> None:
    record, created = store.put("models/m/v1", None)
    assert created
    assert record.size == 32
    assert len(store.load("models/m/v1").dek) == 32


def test_no_plaintext_at_rest(store: KeyStore, tmp_path: Path) -> None:
    dek = os.urandom(32)
    store.put("models/m/v1", SecretBytes(dek))
    store.rewrap_all(SoftwareKek.generate())
    for path in tmp_path.iterdir():
        assert dek not in path.read_bytes(), path


def test_idempotent_same_bytes_and_conflicts(store: KeyStore) -> None:
    dek = SecretBytes(os.urandom(32))
    store.put("models/m/v1", dek)
    record, created = store.put("models/m/v1", SecretBytes(dek.reveal()), model_digest=DIGEST)
    assert not created
    assert record.model_digest == DIGEST
    with pytest.raises(KeyConflict, match="different key bytes"):
        store.put("models/m/v1", SecretBytes(os.urandom(32)))
    with pytest.raises(KeyConflict, match="already exists"):
        store.put("models/m/v1", None)
    with pytest.raises(KeyConflict, match="different model digest"):
        store.put("models/m/v1", dek, model_digest="sha256:" + "cd" * 32)
    store.revoke("models/m/v1")
    with pytest.raises(KeyConflict, match="revoked"):
        store.put("models/m/v1", dek)
    store.delete("models/m/v1")
    assert store.put("models/m/v1", dek)[1]


@pytest.mark.parametrize("size", [0, 1, 15, 17, 31, 33, 64])
def test_bad_dek_sizes(store: KeyStore, size: int) -> None:
    with pytest.raises(ConfigError, match="16, 24 or 32"):
        store.put("models/m/v1", SecretBytes(b"k" * size))


@pytest.mark.parametrize("size", [16, 24, 32])
def test_aes_key_sizes(store: KeyStore, size: int) -> None:
    store.put(f"models/m/{size}", SecretBytes(b"k" * size))
    assert len(store.load(f"models/m/{size}").dek) == size


def test_unknown_keys(store: KeyStore) -> None:
    for op in (store.get, store.load, store.revoke, store.delete, store.get_policy):
        with pytest.raises(KeyNotFound):
            op("models/m/none")
    with pytest.raises(KeyNotFound):
        store.set_policy("models/m/none", None, None)


def test_policy_storage(store: KeyStore) -> None:
    store.put("models/m/v1", None, policy_json='{"a":1}', policy_digest="sha256:x")
    assert store.get_policy("models/m/v1") == '{"a":1}'
    record = store.set_policy("models/m/v1", '{"b":2}', "sha256:y")
    assert record.policy_digest == "sha256:y"
    assert store.load("models/m/v1").policy_json == '{"b":2}'


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("state", "active"),
        ("policy_json", '{"apiVersion":"modelseal/v1","kind":"ReleasePolicy","tee":["sample"]}'),
        ("policy_digest", "sha256:forged"),
        ("model_digest", "sha256:" + "00" * 32),
        ("size", 16),
    ],
)
def test_sql_level_edits_are_detected(
    store: KeyStore, tmp_path: Path, column: str, value: object
) -> None:
    store.put("models/m/v1", None, policy_json='{"x":1}', policy_digest="sha256:x")
    store.revoke("models/m/v1")
    _sql(tmp_path, f"UPDATE ms_keys SET {column} = ? WHERE key_id = 'models/m/v1'", value)
    with pytest.raises(DecryptionError, match="failed authentication"):
        store.load("models/m/v1")


def test_moved_ciphertext_fails(store: KeyStore, tmp_path: Path) -> None:
    store.put("models/m/v1", None)
    store.put("models/m/v2", None)
    conn = sqlite3.connect(tmp_path / "kbs.sqlite3")
    (wrapped, mac) = conn.execute(
        "SELECT wrapped, mac FROM ms_keys WHERE key_id = 'models/m/v1'"
    ).fetchone()
    conn.execute(
        "UPDATE ms_keys SET wrapped = ?, mac = ? WHERE key_id = 'models/m/v2'", (wrapped, mac)
    )
    conn.commit()
    conn.close()
    with pytest.raises(DecryptionError):
        store.load("models/m/v2")


def test_rewrap_all_in_one_transaction(store: KeyStore, tmp_path: Path) -> None:
    deks = {f"models/m/v{i}": SecretBytes(os.urandom(32)) for i in range(5)}
    for key_id, dek in deks.items():
        store.put(key_id, dek)
    old = store.ring.active
    new = SoftwareKek.generate()
    store.ring = KekRing(new, [old])
    assert store.rewrap_all(new) == 5
    assert store.rewrap_all(new) == 0
    store.ring = KekRing(new)
    assert store.count_by_kek() == {new.id: 5}
    for key_id, dek in deks.items():
        assert store.load(key_id).dek == dek


def test_rewrap_rolls_back_on_a_bad_row(store: KeyStore, tmp_path: Path) -> None:
    for i in range(3):
        store.put(f"models/m/v{i}", None)
    _sql(tmp_path, "UPDATE ms_keys SET size = 24 WHERE key_id = 'models/m/v2'")
    old = store.ring.active
    new = SoftwareKek.generate()
    store.ring = KekRing(new, [old])
    with pytest.raises(DecryptionError):
        store.rewrap_all(new)
    assert store.count_by_kek() == {old.id: 3}


def test_load_without_the_kek(store: KeyStore) -> None:
    store.put("models/m/v1", None)
    store.ring = KekRing(SoftwareKek.generate())
    with pytest.raises(ConfigError, match="does not hold"):
        store.load("models/m/v1")


@pytest.mark.parametrize(
    "key_id",
    ["a/b/c", "models/llama-3/v1.0", "A_1/-b/c.d.e", "x/y/" + "z" * 200],
)
def test_valid_key_ids(key_id: str) -> None:
    assert validate_key_id(key_id) == key_id


@pytest.mark.parametrize(
    "key_id",
    [
        "",
        "a/b",
        "a/b/c/d",
        "/a/b",
        "a//c",
        "../b/c",
        "a/./c",
        ".a/b/c",
        "a/b/c/",
        "a b/c/d",
        "a/b/\u00e9",
        "a/b/c\n",
        "x/y/" + "z" * 260,
    ],
)
def test_invalid_key_ids(key_id: str) -> None:
    assert not is_valid_key_id(key_id)
    with pytest.raises(ConfigError, match="invalid key id"):
        validate_key_id(key_id)


@settings(deadline=None)
@given(st.text(max_size=40))
def test_key_id_grammar(key_id: str) -> None:
    if is_valid_key_id(key_id):
        parts = key_id.split("/")
        assert len(parts) == 3
        assert all(p and p[0] != "." and p.isascii() for p in parts)
    else:
        with pytest.raises(ConfigError):
            validate_key_id(key_id)


def test_model_digest_validation() -> None:
    assert validate_model_digest(" SHA256:" + "AB" * 32) == DIGEST
    for bad in ("sha256:", "sha512:" + "ab" * 32, "ab" * 32, "sha256:" + "zz" * 32):
        with pytest.raises(ConfigError):
            validate_model_digest(bad)
