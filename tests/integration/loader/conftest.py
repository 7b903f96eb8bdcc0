"""A sealed multi-file model served over real HTTP, and a memory-backed destination."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from modelseal.crypto.secret import SecretBytes
from modelseal.format.manifest import SEALED_MANIFEST_NAME
from modelseal.format.options import SealOptions
from modelseal.loader.attest import KeyRelease
from modelseal.loader.destination import statfs_type
from modelseal.loader.settings import LoaderSettings
from modelseal.owner.sealing import seal_directory
from tests.unit.loader.blobserver import BlobServer

KEY_ID = "models/m1/v1"
FILES = {
    "config.json": b'{"layers": 2}',
    "weights/model-00001.bin": os.urandom(300_000),
    "weights/model-00002.bin": os.urandom(70_001),
    "empty.txt": b"",
}


@dataclass
class SealedModelServer:
    server: BlobServer
    dek: SecretBytes
    digest: str
    sealed: dict[str, bytes]  # sealed relative path -> bytes
    info: dict[str, object]
    #: every DEK handed to the loader (to check that it was zeroized afterwards)
    released: list[SecretBytes] = field(default_factory=list)

    @property
    def model_url(self) -> str:
        return self.server.url + "/models/m1"

    def publish(self) -> None:
        self.server.blobs["/models/m1"] = json.dumps(self.info).encode()
        for rel, data in self.sealed.items():
            self.server.blobs[f"/blobs/m1/v1/{rel}"] = data

    def release(self) -> object:
        def fn(settings: LoaderSettings, kbs_url: str, key_id: str) -> KeyRelease:
            assert key_id == KEY_ID
            dek = SecretBytes(self.dek.reveal())
            self.released.append(dek)
            return KeyRelease(
                dek=dek,
                tee="sample",
                token_id="t-1",
                kbs_url=kbs_url,
                insecure=True,
            )

        return fn


@pytest.fixture
def shm_dest() -> Iterator[Path]:
    if not Path("/dev/shm").is_dir() or statfs_type(Path("/dev/shm")) != "tmpfs":
        pytest.skip("/dev/shm is not tmpfs")
    root = Path(tempfile.mkdtemp(prefix="ms-load-", dir="/dev/shm"))
    try:
        yield root / "models"
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _serve(tmp_path: Path, *, hide_names: bool) -> Iterator[SealedModelServer]:
    src = tmp_path / "model"
    for rel, data in FILES.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    dek = SecretBytes(os.urandom(32))
    sealed = seal_directory(
        src,
        tmp_path / "sealed",
        dek,
        SealOptions(key_id=KEY_ID, model="m1", segment_size=16 << 10, hide_names=hide_names),
        version="v1",
    )
    blobs = {rel: (tmp_path / "sealed" / rel).read_bytes() for rel in sealed.sealed_paths()}
    with BlobServer().running() as server:
        base = server.url + "/blobs/m1/v1/"
        info = {
            "id": "m1",
            "url": base,
            "name": "m1",
            "version": "v1",
            "encrypted": True,
            "kbs": "trustee",
            "kbs_url": "http://127.0.0.1:9/",
            "key_id": KEY_ID,
            "format": "modelseal/v1",
            "model_digest": sealed.model_digest,
            "manifest_url": base + SEALED_MANIFEST_NAME,
            "files": [
                {
                    # under hidden names, what publish registers: the opaque name
                    "path": entry.header_path,
                    "url": base + entry.sealed_relpath,
                    "sealed_size": len(blobs[entry.sealed_relpath]),
                }
                for entry in sealed.manifest.files
            ],
        }
        model = SealedModelServer(server, dek, sealed.model_digest, blobs, info)
        model.publish()
        yield model


@pytest.fixture
def sealed_model(tmp_path: Path) -> Iterator[SealedModelServer]:
    yield from _serve(tmp_path, hide_names=False)


@pytest.fixture
def hidden_model(tmp_path: Path) -> Iterator[SealedModelServer]:
    """The same model sealed with hidden names (opaque, padded blobs)."""
    yield from _serve(tmp_path, hide_names=True)
