"""The publisher's registry client against a real registry server."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelseal.errors import ConfigError, ModelNotFound, TokenError, TransientError
from modelseal.owner.registry_client import RegistryClient, RegistryConflict
from modelseal.protocol.model_info import ModelRegistration
from tests.conftest import free_port
from tests.e2e.test_registry_http import RegistryServer, start_registry

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    server = start_registry(tmp_path_factory.mktemp("rc") / "data")
    try:
        yield server
    finally:
        server.stop()


def _file(tmp_path: Path, name: str, size: int) -> tuple[Path, str]:
    path = tmp_path / name
    path.write_bytes(os.urandom(size))
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def test_upload_status_register_read(registry: RegistryServer, tmp_path: Path) -> None:
    blob, sha = _file(tmp_path, "w", 2_500_000)
    seen: list[int] = []
    with RegistryClient(registry.url, registry.token) as client:
        assert client.blob_status("m", "v1", "w.enc") is None
        status = client.upload_blob("m", "v1", "w.enc", blob, sha256=sha, progress=seen.append)
        assert sum(seen) == blob.stat().st_size
        assert client.blob_status("m", "v1", "w.enc") == status
        assert status.sha256 == sha
        reg = ModelRegistration(
            format="cnap",
            kbs="simple_kbs",
            kbs_url="http://kbs/kbs/v1/keys/a/b/c/transfer",
            key_id="a/b/c",
            files=[{"path": "w", "blob": "w.enc", "sealed_size": status.size, "sha256": sha}],  # type: ignore[list-item]
        )
        info, created = client.register("m", "v1", reg)
        assert created
        assert info.url == f"{registry.url}/blobs/m/v1/w.enc"
        assert client.register("m", "v1", reg) == (info, False)
        assert client.get_model("m") == info
        assert client.find_model("m", "v2") is None
        assert [m.id for m in client.list_models()] == ["m"]
        target = tmp_path / "back"
        client.download("m", "v1", "w.enc", target)
        assert target.read_bytes() == blob.read_bytes()
        with pytest.raises(RegistryConflict):
            client.upload_blob("m", "v1", "w.enc", blob, sha256=sha)
        with pytest.raises(ModelNotFound):
            client.get_model("nope")
        client.delete_version("m", "v1")
        with pytest.raises(ModelNotFound):
            client.get_model("m")


def test_wrong_or_missing_token(registry: RegistryServer, tmp_path: Path) -> None:
    blob, sha = _file(tmp_path, "x", 10)
    with RegistryClient(registry.url, "wrong") as client, pytest.raises(TokenError):
        client.upload_blob("m", "v9", "x", blob, sha256=sha)
    with RegistryClient(registry.url) as client, pytest.raises(ConfigError):
        client.upload_blob("m", "v9", "x", blob, sha256=sha)


def test_unreachable_registry_is_transient(tmp_path: Path) -> None:
    client = RegistryClient(f"http://127.0.0.1:{free_port()}")
    with client, pytest.raises(TransientError):
        client.get_model("m")


def test_invalid_names_never_reach_the_wire(registry: RegistryServer, tmp_path: Path) -> None:
    blob, sha = _file(tmp_path, "x", 10)
    with RegistryClient(registry.url, registry.token) as client:
        with pytest.raises(ConfigError):
            client.upload_blob("m", "v1", "../../etc/passwd", blob, sha256=sha)
        with pytest.raises(ConfigError):
            client.get_model("..")
    with pytest.raises(ConfigError):
        RegistryClient("ftp://x")
