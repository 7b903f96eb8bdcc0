"""``modelseal load --tee mock-tdx``: full DCAP-path attestation, model digest via init-data.

The KBS trusts only the mock-tdx test root; the key's policy pins MRTD and requires the
TEE's launch init-data to name the published model digest. The loader sends its init-data
with the evidence (mock-tdx puts its digest into MRCONFIGID, as the host does on real TDX)
and refuses to load any other model.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from modelseal.kbs.admin_auth import load_admin_credential, mint_admin_token
from modelseal.loader.destination import inspect_destination
from modelseal.owner.kbs_admin import KbsAdminClient
from modelseal.owner.publish import PublishRequest, publish
from modelseal.quickstart.services import Service, kbs_service, registry_service, run_cli
from modelseal.tee.mock_tdx.attester import Attester
from modelseal.tee.mock_tdx.ca import MockTdxCA

pytestmark = pytest.mark.e2e

FILES = {"model.safetensors": os.urandom(150_000), "config.json": b'{"a": 1}'}


@dataclass
class TdxStack:
    root: Path
    ca_dir: Path
    kbs: Service
    registry: Service
    digest: str
    model_url: str


def _init_data(path: Path, digest: str) -> Path:
    path.write_text(f'version = "0.1.0"\nalgorithm = "sha384"\n[data]\nmodel_digest = "{digest}"\n')
    return path


@pytest.fixture(scope="module")
def tdx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TdxStack]:
    root = tmp_path_factory.mktemp("loader-mock-tdx")
    ca = MockTdxCA.create(root / "ca")
    mr_td = Attester(ca.directory).measurements["mr_td"]
    kbs = kbs_service(root / "kbs", root, tee_options={"mock_tdx_root": str(ca.root_pem_path)})
    registry = registry_service(root / "registry", root)
    try:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda s: s.start(timeout=60), (kbs, registry)))
        token = mint_admin_token(load_admin_credential(root / "kbs"), ttl=600, now=time.time())
        src = root / "model"
        src.mkdir()
        for rel, data in FILES.items():
            (src / rel).write_bytes(data)
        policy = {
            "apiVersion": "modelseal/v1",
            "kind": "ReleasePolicy",
            "tee": ["mock-tdx"],
            "measurements": [{"mr_td": mr_td}],
        }
        request = PublishRequest(
            source=src,
            registry_url=registry.url,
            kbs_url=kbs.url,
            model_id="tdx-model",
            registry_token=(root / "registry" / "upload-token").read_text().strip(),
            policy=policy,
            staging_dir=root / "staging",
        )
        with KbsAdminClient(kbs.url, token) as admin:
            info = publish(request, admin).model
            assert info.model_digest is not None
            admin.set_policy(info.key_id or "", {**policy, "model_digest": info.model_digest})
        yield TdxStack(
            root, ca.directory, kbs, registry, info.model_digest, registry.url + "/models/tdx-model"
        )
    finally:
        kbs.stop()
        registry.stop()


@pytest.fixture
def shm() -> Iterator[Path]:
    if not inspect_destination(Path("/dev/shm")).memory_backed:
        pytest.skip("/dev/shm is not memory-backed here")
    path = Path(tempfile.mkdtemp(prefix="ms-tdx-", dir="/dev/shm"))
    try:
        yield path / "models"
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _load(tdx: TdxStack, dest: Path, *extra: str) -> tuple[int, str]:
    args = ["load", "--model", tdx.model_url, "--dest", str(dest), "--tee", "mock-tdx"]
    done = run_cli([*args, "--mock-tdx-dir", str(tdx.ca_dir), *extra])
    return done.returncode, done.stderr


def test_init_data_with_the_model_digest_releases_the_key(tdx: TdxStack, shm: Path) -> None:
    init = _init_data(tdx.root / "good.toml", tdx.digest)
    code, err = _load(tdx, shm, "--init-data", str(init))
    assert code == 0, err
    for rel, data in FILES.items():
        assert (shm / rel).read_bytes() == data
    receipt = json.loads((shm / ".modelseal" / "receipt.json").read_text())
    assert receipt["tee"] == "mock-tdx"
    assert receipt["model_digest"] == tdx.digest


def test_without_init_data_the_policy_denies(tdx: TdxStack, shm: Path) -> None:
    code, err = _load(tdx, shm)
    assert code == 4, err
    assert not shm.exists() or not any(p.is_file() for p in shm.rglob("*"))


def test_init_data_for_another_model_is_denied(tdx: TdxStack, shm: Path) -> None:
    init = _init_data(tdx.root / "other.toml", "sha256:" + "12" * 32)
    code, err = _load(tdx, shm, "--init-data", str(init))
    assert code == 4, err


def test_mock_tdx_without_its_ca_is_a_config_error(tdx: TdxStack, shm: Path) -> None:
    done = run_cli(["load", "--model", tdx.model_url, "--dest", str(shm), "--tee", "mock-tdx"])
    assert done.returncode == 2, done.stderr
