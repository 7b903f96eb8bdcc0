"""Loading CNAP-format models (one whole-file AES-GCM blob) from a CNAP model-info URL."""

from __future__ import annotations

import dataclasses
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelseal import errors
from modelseal.crypto.secret import SecretBytes
from modelseal.format import cnap
from modelseal.loader.attest import KeyRelease
from modelseal.loader.loader import load_model
from modelseal.loader.settings import LoaderSettings
from tests.unit.loader.blobserver import BlobServer

PLAIN = os.urandom(20_000_000 + 7)
KEY = os.urandom(32)


@pytest.fixture
def cnap_server() -> Iterator[BlobServer]:
    out = io.BytesIO()
    cnap.encrypt_stream(io.BytesIO(PLAIN), out, SecretBytes(KEY), size=len(PLAIN))
    with BlobServer().running() as server:
        server.blobs["/enc/resnet50.pb.enc"] = out.getvalue()
        server.blobs["/plain/resnet50.pb"] = PLAIN
        info = {  # exactly CNAP's model-info fields
            "id": "resnet50",
            "framework": "tensorflow",
            "target": "object-detection",
            "url": server.url + "/enc/resnet50.pb.enc",
            "name": "resnet50",
            "version": "1.0",
            "dtype": "int8",
            "encrypted": True,
            "kbs": "simple_kbs",
            "kbs_url": "https://cnap-kbs.example/v1/keys/transfer",
            "key_id": "models/resnet50/1",
        }
        server.blobs["/models/resnet50"] = json.dumps(info).encode()
        plain_info = {**info, "url": server.url + "/plain/resnet50.pb", "encrypted": False}
        server.blobs["/models/resnet50-plain"] = json.dumps(plain_info).encode()
        yield server


def _release(key: bytes) -> object:
    def fn(settings: LoaderSettings, kbs_url: str, key_id: str) -> KeyRelease:
        assert key_id == "models/resnet50/1"
        assert kbs_url == "http://127.0.0.1:9"
        return KeyRelease(SecretBytes(key), "sample", None, kbs_url, True)

    return fn


def _settings(server: BlobServer, dest: Path, name: str = "resnet50") -> LoaderSettings:
    return LoaderSettings(
        model=f"{server.url}/models/{name}", dest=dest, tee="sample", kbs_url="http://127.0.0.1:9"
    )


def test_cnap_model_loads(cnap_server: BlobServer, shm_dest: Path) -> None:
    receipt = load_model(_settings(cnap_server, shm_dest), release=_release(KEY))  # type: ignore[arg-type]
    assert (shm_dest / "resnet50.pb").read_bytes() == PLAIN
    assert receipt.format == "cnap"
    assert receipt.model_digest is None
    assert receipt.bytes == len(PLAIN)


def test_cnap_wrong_key_leaves_nothing(cnap_server: BlobServer, shm_dest: Path) -> None:
    with pytest.raises(errors.DecryptionError):
        load_model(_settings(cnap_server, shm_dest), release=_release(os.urandom(32)))  # type: ignore[arg-type]
    assert [p for p in shm_dest.rglob("*") if p.is_file()] == []


def test_cnap_tampered_blob(cnap_server: BlobServer, shm_dest: Path) -> None:
    blob = bytearray(cnap_server.blobs["/enc/resnet50.pb.enc"])
    blob[len(blob) // 3] ^= 0x80
    cnap_server.blobs["/enc/resnet50.pb.enc"] = bytes(blob)
    with pytest.raises(errors.DecryptionError):
        load_model(_settings(cnap_server, shm_dest), release=_release(KEY))  # type: ignore[arg-type]
    assert [p for p in shm_dest.rglob("*") if p.is_file()] == []


def test_without_kbs_url_the_cnap_transfer_url_is_followed(
    cnap_server: BlobServer, shm_dest: Path
) -> None:
    asked: list[str] = []

    def release(settings: LoaderSettings, kbs_url: str, key_id: str) -> KeyRelease:
        asked.append(kbs_url)
        return KeyRelease(SecretBytes(KEY), "sample", None, kbs_url, True)

    settings = _settings(cnap_server, shm_dest).with_overrides(kbs_url=None)
    receipt = load_model(settings, release=release)
    assert asked == ["https://cnap-kbs.example/v1/keys/transfer"]
    assert receipt.kbs_url == asked[0]
    assert (shm_dest / "resnet50.pb").read_bytes() == PLAIN


def test_unencrypted_cnap_model_is_downloaded(cnap_server: BlobServer, shm_dest: Path) -> None:
    def never(*args: object) -> KeyRelease:
        raise AssertionError("no key is needed for an unencrypted model")

    receipt = load_model(_settings(cnap_server, shm_dest, "resnet50-plain"), release=never)
    assert (shm_dest / "resnet50.pb").read_bytes() == PLAIN
    assert receipt.tee == "none"


@pytest.mark.parametrize("name", ["resnet50", "resnet50-plain"])
def test_a_pinned_load_refuses_cnap_models(
    cnap_server: BlobServer, shm_dest: Path, name: str
) -> None:
    """With a pinned model digest, a registry answering with a CNAP model (which carries no
    digest; a plaintext one not even a key) is refused before any key release or download:
    otherwise it could hand a pinned TEE any weights it likes."""
    released: list[str] = []

    def release(settings: LoaderSettings, kbs_url: str, key_id: str) -> KeyRelease:
        released.append(key_id)
        return KeyRelease(SecretBytes(KEY), "sample", None, kbs_url, True)

    pinned = dataclasses.replace(
        _settings(cnap_server, shm_dest, name), model_digest="sha256:" + "ab" * 32
    )
    with pytest.raises(errors.IntegrityError, match="only modelseal/v1 models can be pinned"):
        load_model(pinned, release=release)  # type: ignore[arg-type]
    assert released == []
    assert not (shm_dest / "resnet50.pb").exists()
