"""Model records: atomic JSON documents, immutable versions, latest by registration order."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from modelseal.errors import BackendError, ConfigError, ModelNotFound
from modelseal.protocol.model_info import ModelRegistration
from modelseal.registry.records import RecordConflict, RecordStore
from modelseal.registry.settings import RegistrySettings, ensure_upload_token

SHA = "ab" * 32


def _reg(size: int = 1) -> ModelRegistration:
    return ModelRegistration.from_data(
        {
            "format": "cnap",
            "kbs": "simple_kbs",
            "kbs_url": "http://kbs/kbs/v1/keys/k/transfer",
            "key_id": "k",
            "files": [{"path": "m.pb", "blob": "m.pb.enc", "sealed_size": size, "sha256": SHA}],
        }
    )


def test_register_get_latest(tmp_path: Path) -> None:
    store = RecordStore(tmp_path)
    r1, created = store.register("m", "v2", _reg())
    assert created
    assert r1.sequence == 0
    r2, _ = store.register("m", "v1", _reg())
    assert store.get("m").version == "v1"  # registered last wins, not string order
    assert store.get("m", "v2") == r1
    assert [r.version for r in store.versions("m")] == ["v2", "v1"]
    assert [r.id for r in store.latest_all()] == ["m"]
    assert r2.sequence == 1


def test_idempotent_and_conflict(tmp_path: Path) -> None:
    store = RecordStore(tmp_path)
    first, _ = store.register("m", "v1", _reg())
    again, created = store.register("m", "v1", _reg())
    assert not created
    assert again == first
    with pytest.raises(RecordConflict):
        store.register("m", "v1", _reg(size=2))


def test_not_found_and_delete(tmp_path: Path) -> None:
    store = RecordStore(tmp_path)
    with pytest.raises(ModelNotFound):
        store.get("nope")
    with pytest.raises(ModelNotFound):
        store.get("nope", "v1")
    store.register("m", "v1", _reg())
    store.delete("m", "v1")
    with pytest.raises(ModelNotFound):
        store.get("m")
    with pytest.raises(ModelNotFound):
        store.delete("m", "v1")
    assert store.latest_all() == []


def test_invalid_names_and_corrupt_record(tmp_path: Path) -> None:
    store = RecordStore(tmp_path)
    with pytest.raises(ConfigError):
        store.get("..")
    with pytest.raises(ConfigError):
        store.register("m", "../x", _reg())
    store.register("m", "v1", _reg())
    (tmp_path / "models" / "m" / "v1.json").write_text("{")
    with pytest.raises(BackendError):
        store.get("m", "v1")
    assert not list((tmp_path / "models" / "m").glob(".*tmp"))


def test_upload_token_created_once_private(tmp_path: Path) -> None:
    token = ensure_upload_token(tmp_path / "d")
    path = tmp_path / "d" / "upload-token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(token) >= 32
    assert ensure_upload_token(tmp_path / "d") == token
    path.chmod(0o644)
    with pytest.raises(ConfigError):
        ensure_upload_token(tmp_path / "d")
    path.chmod(0o600)
    path.write_text("short")
    with pytest.raises(ConfigError):
        ensure_upload_token(tmp_path / "d")


def test_settings_validation(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        RegistrySettings(data_dir=tmp_path, tls_cert=tmp_path / "c")
    with pytest.raises(ConfigError):
        RegistrySettings(data_dir=tmp_path, public_url="ftp://x")
    with pytest.raises(ConfigError):
        RegistrySettings(data_dir=tmp_path, max_blob_size=0)
