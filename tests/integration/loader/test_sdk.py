"""SDK: open_model into memory, zero-copy safetensors views, local sealed files with a key."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

import modelseal
from modelseal import errors
from modelseal.crypto.secret import SecretBytes
from modelseal.format.manifest import SEALED_MANIFEST_NAME, sealed_name
from modelseal.format.options import SealOptions
from modelseal.loader.attest import KeyRelease
from modelseal.owner.sealing import seal_directory
from modelseal.protocol.model_info import MANIFEST_PATH
from tests.integration.loader.conftest import FILES, SealedModelServer
from tests.unit.loader.blobserver import BlobServer


def test_open_model_in_memory(sealed_model: SealedModelServer) -> None:
    with modelseal.open_model(sealed_model.model_url, release=sealed_model.release()) as model:
        assert set(model) == set(FILES)
        for rel, data in FILES.items():
            assert bytes(model[rel]) == data
        assert model.model_digest == sealed_model.digest
        assert model.bytes == sum(map(len, FILES.values()))
        view = model["weights/model-00002.bin"]
    # closing zeroes the plaintext that views still point at
    assert bytes(view) == bytes(len(view))


def test_open_model_integrity_failure(sealed_model: SealedModelServer) -> None:
    rel = "weights/model-00001.bin.sealed"
    bad = bytearray(sealed_model.sealed[rel])
    bad[-3] ^= 0x40
    sealed_model.server.blobs[f"/blobs/m1/v1/{rel}"] = bytes(bad)
    with pytest.raises(errors.DecryptionError):
        modelseal.open_model(sealed_model.model_url, release=sealed_model.release())


@pytest.fixture
def sharded_model(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    src = tmp_path / "st"
    src.mkdir()
    rng = np.random.default_rng(1)
    a = {
        "layer0.w": rng.random((64, 32)).astype(np.float32),
        "layer0.b": np.arange(7, dtype=np.int64),
    }
    b = {"head.w": rng.random((3, 5)).astype(np.float16)}
    save_file(a, str(src / "model-00001.safetensors"))
    save_file(b, str(src / "model-00002.safetensors"))
    (src / "config.json").write_text(json.dumps({"n": 2}))
    return src, {**a, **b}


def test_load_safetensors_from_registry(
    tmp_path: Path, sharded_model: tuple[Path, dict[str, np.ndarray]]
) -> None:
    src, expected = sharded_model
    dek = SecretBytes(os.urandom(32))
    sealed = seal_directory(
        src, tmp_path / "sealed", dek, SealOptions(key_id="models/st/v1", model="st"), version="v1"
    )
    with BlobServer().running() as server:
        base = server.url + "/blobs/st/v1/"
        for rel in sealed.sealed_paths():
            server.blobs[f"/blobs/st/v1/{rel}"] = (tmp_path / "sealed" / rel).read_bytes()
        paths = [e.path for e in sealed.files]
        info = {
            "id": "st",
            "url": base,
            "version": "v1",
            "encrypted": True,
            "kbs": "trustee",
            "kbs_url": "http://127.0.0.1:9",
            "key_id": "models/st/v1",
            "format": "modelseal/v1",
            "model_digest": sealed.model_digest,
            "manifest_url": base + SEALED_MANIFEST_NAME,
            "files": [
                {
                    "path": p,
                    "url": base + sealed_name(p),
                    "sealed_size": (tmp_path / "sealed" / sealed_name(p)).stat().st_size,
                }
                for p in paths
            ],
        }
        assert MANIFEST_PATH not in paths
        server.blobs["/models/st"] = json.dumps(info).encode()

        def release(settings: object, kbs_url: str, key_id: str) -> KeyRelease:
            assert key_id == "models/st/v1"
            return KeyRelease(SecretBytes(dek.reveal()), "sample", None, kbs_url, True)

        tensors = modelseal.load_safetensors(server.url + "/models/st", release=release)
        assert set(tensors) == set(expected)
        for name, arr in expected.items():
            assert np.array_equal(tensors[name], arr)
            assert tensors[name].base is not None  # a view over the decrypted buffer
        one = modelseal.load_safetensors(
            server.url + "/models/st", release=release, file="model-00002.safetensors"
        )
        assert set(one) == {"head.w"}


def test_load_safetensors_local_file_with_key(
    tmp_path: Path, sharded_model: tuple[Path, dict[str, np.ndarray]]
) -> None:
    src, expected = sharded_model
    raw_key = os.urandom(32)
    key_file = tmp_path / "model.key"
    from modelseal._internal.encoding import b64url_encode

    key_file.write_text(b64url_encode(raw_key) + "\n")
    sealed_dir = tmp_path / "sealed"
    seal_directory(src, sealed_dir, SecretBytes(raw_key), SealOptions(key_id="models/st/v1"))
    sealed_file = sealed_dir / "model-00001.safetensors.sealed"
    for key in (raw_key, SecretBytes(raw_key), key_file, str(key_file)):
        tensors = modelseal.load_safetensors(sealed_file, key=key)
        assert set(tensors) == {"layer0.w", "layer0.b"}
        assert np.array_equal(tensors["layer0.w"], expected["layer0.w"])
    with pytest.raises(errors.DecryptionError):
        modelseal.load_safetensors(sealed_file, key=os.urandom(32))
    with pytest.raises(errors.ConfigError):
        modelseal.load_safetensors(sealed_file)


def test_a_missing_key_file_is_not_found_like_the_owner_cli(tmp_path: Path) -> None:
    sealed_file = tmp_path / "w.safetensors.sealed"
    sealed_file.write_bytes(b"irrelevant: the key is read first")
    with pytest.raises(errors.NotFound) as info:
        modelseal.load_safetensors(sealed_file, key=tmp_path / "missing.key")
    assert info.value.exit_code == 3
    unreadable = tmp_path / "dir.key"
    unreadable.mkdir()
    with pytest.raises(errors.ConfigError) as bad:
        modelseal.load_safetensors(sealed_file, key=unreadable)
    assert bad.value.exit_code == 2
