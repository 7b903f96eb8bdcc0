"""Composite evidence E2E: mock-tdx CPU TEE + NVIDIA GPU(s) → real ``kbs serve`` → policy.

The loader's ``KbsClient`` sends Trustee's composite evidence: the GPU reports (from the
NVML attester over a fake NVML, signed by a test device CA the KBS trusts through
``--nvidia-device-root``) bound to the session's nonce and TEE key, their JSON text
covered by the CPU TEE's report data. The KBS verifies both, issues one EAR token with a
``gpu0`` submod, and the policy's ``gpus:`` section decides: one CC-mode GPU with the
pinned measurement releases; no GPU, a GPU whose measurement differs, or one in
developer-tools mode are denied (403, audited with the reason); a GPU whose measurements
contradict its RIM fails attestation itself.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from modelseal.crypto.secret import SecretBytes
from modelseal.errors import AttestationError, PolicyDenied
from modelseal.kbs.state import KbsState, offline_audit_entries
from modelseal.loader.kbs_client import KbsClient
from modelseal.tee.mock_tdx.attester import Attester as TdxAttester
from modelseal.tee.mock_tdx.ca import MockTdxCA
from modelseal.tee.nvidia.attester import Attester as GpuAttester
from modelseal.tee.nvidia.report import parse_report
from tests.e2e.kbs_process import start_kbs, stop_process
from tests.unit.tee.nvidia.conftest import SAMPLE
from tests.unit.tee.nvidia.fakenvml import FakeNvml
from tests.unit.tee.nvidia.mockgpu import MockGpu
from tests.unit.tee.nvidia.rimgen import RimCA

pytestmark = pytest.mark.e2e

DEK = bytes(range(3, 35))
GPU_KEY = "models/gpu/one-cc-gpu"
RIM_KEY = "models/gpu/rim-matched"
#: the sample report's measurement 2, which the test GPU reports unless told otherwise
MEASURED = parse_report(SAMPLE.report).measurements


@dataclass
class Env:
    url: str
    data_dir: Path
    tdx_dir: Path
    gpu: MockGpu


def _policy(**gpus: object) -> dict[str, object]:
    return {
        "apiVersion": "modelseal/v1",
        "kind": "ReleasePolicy",
        "tee": ["mock-tdx"],
        "gpus": gpus,
    }


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    import time

    root = tmp_path_factory.mktemp("nvidia-kbs")
    ca = MockTdxCA.create(root / "ca")
    gpu = MockGpu()
    rim_ca = RimCA.create(time.time())
    rims = root / "rims"
    rims.mkdir()
    (rims / "driver.swidtag").write_bytes(
        rim_ca.sign(SAMPLE.driver, {i - 1: MEASURED[i] for i in range(11, 41)})
    )
    (rims / "vbios.swidtag").write_bytes(
        rim_ca.sign(SAMPLE.vbios, {i - 1: MEASURED[i] for i in range(3, 11)})
    )
    state = KbsState.open(root / "kbs")
    pinned = {"2": MEASURED[2].hex()}
    state.keys.put(
        GPU_KEY,
        SecretBytes(DEK),
        policy=_policy(min_count=1, measurements=[pinned], min_driver_version="550.90"),
        actor="test",
    )
    state.keys.put(RIM_KEY, SecretBytes(DEK), policy=_policy(rim_match=True), actor="test")
    state.close()
    url, proc = start_kbs(
        root / "kbs",
        "--mock-tdx-root", str(ca.root_pem_path),
        "--nvidia-device-root", str(gpu.write_root(root / "gpu-root.pem")),
        "--rim", str(rims),
        "--nvidia-rim-root", str(rim_ca.write_root(root / "rim-root.pem")),
    )  # fmt: skip
    try:
        yield Env(url, root / "kbs", ca.directory, gpu)
    finally:
        stop_process(proc)
        if proc.stderr:
            proc.stderr.close()


def _client(env: Env, nvml: FakeNvml | None) -> KbsClient:
    devices = [("nvidia", GpuAttester(nvml=nvml))] if nvml is not None else []
    return KbsClient(env.url, TdxAttester(env.tdx_dir), tee="mock-tdx", devices=devices)


def _last_denial(env: Env, key: str) -> tuple[str, ...]:
    rows = [r for r in offline_audit_entries(env.data_dir) if r.key_id == key]
    assert rows[-1].decision == "deny"
    return rows[-1].reasons


def test_one_cc_gpu_releases(env: Env) -> None:
    with _client(env, FakeNvml([env.gpu])) as client:
        assert client.get_resource(GPU_KEY).reveal() == DEK
        assert client.get_resource(RIM_KEY).reveal() == DEK
        token = client._auth.token
    assert token is not None
    payload = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    gpu0 = payload["submods"]["gpu0"]
    assert gpu0["ear.status"] == "affirming"
    claims = gpu0["ear.veraison.annotated-evidence"]["nvidia"]
    assert claims["extra"]["rim"]["driver"] == "match"
    assert claims["measurements"]["2"] == MEASURED[2].hex()
    rows = [r for r in offline_audit_entries(env.data_dir) if r.key_id == GPU_KEY]
    assert rows[-1].decision == "allow"


def test_without_gpu_evidence_denied(env: Env) -> None:
    with _client(env, None) as client, pytest.raises(PolicyDenied):
        client.get_resource(GPU_KEY)
    assert any("attestation carried 0" in r for r in _last_denial(env, GPU_KEY))


def test_gpu_with_another_measurement_denied(env: Env) -> None:
    other = bytearray(MEASURED[2])
    other[-1] ^= 1
    nvml = FakeNvml([env.gpu], measurements={2: bytes(other)})
    with _client(env, nvml) as client, pytest.raises(PolicyDenied):
        client.get_resource(GPU_KEY)
    assert any("gpu0: no measurements entry matched" in r for r in _last_denial(env, GPU_KEY))


def test_devtools_mode_denied(env: Env) -> None:
    with _client(env, FakeNvml([env.gpu], dev_tools=1)) as client, pytest.raises(PolicyDenied):
        client.get_resource(GPU_KEY)
    assert any("mode is 'devtools'" in r for r in _last_denial(env, GPU_KEY))


def test_gpu_contradicting_its_rim_fails_attestation(env: Env) -> None:
    other = bytearray(MEASURED[20])
    other[-1] ^= 1
    nvml = FakeNvml([env.gpu], measurements={20: bytes(other)})
    with _client(env, nvml) as client, pytest.raises(AttestationError):
        client.get_resource(RIM_KEY)


def test_gpu_report_from_an_untrusted_device_ca_fails_attestation(env: Env) -> None:
    with _client(env, FakeNvml([MockGpu()])) as client, pytest.raises(AttestationError):
        client.get_resource(GPU_KEY)


def test_eight_gpus_in_one_attestation(env: Env) -> None:
    """An 8-GPU board: eight reports in the additional evidence, eight submods in a token
    that still travels as a bearer header."""
    with _client(env, FakeNvml([env.gpu] * 8)) as client:
        assert client.get_resource(GPU_KEY).reveal() == DEK
        token = client._auth.token
    assert token is not None
    payload = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    assert sorted(payload["submods"]) == ["cpu0", *(f"gpu{i}" for i in range(8))]


def test_loader_attests_as_mock_tdx_plus_nvidia(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """The loader's own path: ``--tee mock-tdx+nvidia`` builds the CPU attester and the
    NVML attester (``pynvml`` is the fake here) and sends composite evidence."""
    import sys

    from modelseal.loader.attest import release_key, resolve_tee
    from modelseal.loader.settings import LoaderSettings

    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml([env.gpu]))
    settings = LoaderSettings(
        model="http://127.0.0.1:9/models/m",
        tee="mock-tdx+nvidia",
        tee_options={"mock_tdx_dir": env.tdx_dir},
    )
    assert resolve_tee(settings) == "mock-tdx+nvidia"
    release = release_key(settings, env.url, GPU_KEY)
    assert release.dek.reveal() == DEK
    assert release.tee == "mock-tdx"
    plain = LoaderSettings(
        model="http://127.0.0.1:9/models/m",
        tee="mock-tdx",
        tee_options={"mock_tdx_dir": env.tdx_dir},
    )
    with pytest.raises(PolicyDenied):
        release_key(plain, env.url, GPU_KEY)


def test_a_gpu_alone_is_not_a_session_tee(env: Env) -> None:
    """Device kinds attest only next to a CPU TEE: /auth refuses them as the session TEE."""
    import httpx

    body = {"version": "0.4.0", "tee": "nvidia", "extra-params": ""}
    response = httpx.post(env.url + "/kbs/v0/auth", json=body, timeout=10)
    assert response.status_code == 401
    assert "TEE kind not accepted" in response.text


@pytest.fixture(scope="module")
def published(env: Env, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A model in a real registry whose key (in ``env``'s KBS) needs one CC-mode GPU
    showing the pinned measurement: (model URL, key id)."""
    import time

    from modelseal.kbs.admin_auth import load_admin_credential, mint_admin_token
    from modelseal.owner.kbs_admin import KbsAdminClient
    from modelseal.owner.publish import PublishRequest, publish
    from modelseal.quickstart.services import registry_service

    root = tmp_path_factory.mktemp("nvidia-registry")
    registry = registry_service(root / "registry", root)
    registry.start(timeout=60)
    try:
        src = root / "model"
        src.mkdir()
        (src / "model.safetensors").write_bytes(bytes(range(256)) * 64)
        request = PublishRequest(
            source=src,
            registry_url=registry.url,
            kbs_url=env.url,
            model_id="gpu-model",
            registry_token=(root / "registry" / "upload-token").read_text().strip(),
            policy=_policy(min_count=1, measurements=[{"2": MEASURED[2].hex()}]),
            staging_dir=root / "staging",
        )
        token = mint_admin_token(load_admin_credential(env.data_dir), ttl=600, now=time.time())
        with KbsAdminClient(env.url, token) as admin:
            info = publish(request, admin).model
        yield registry.url + "/models/gpu-model", info.key_id or ""
    finally:
        registry.stop()


def test_the_load_command_exits_4_for_a_gpu_measurement_differing_in_its_last_byte(
    env: Env, published: tuple[str, str], tmp_path: Path
) -> None:
    """``modelseal load --tee mock-tdx+nvidia`` as a process, its NVML a fake on
    ``PYTHONPATH`` (tests/e2e/fake_pynvml) reporting the test GPU the KBS trusts: the GPU
    with the pinned measurement loads the model; the same GPU whose measurement block 2
    differs in its last byte is denied by the policy, exit 4, and the denial is audited."""
    import os

    import modelseal
    from modelseal.quickstart.services import run_cli
    from tests.conftest import ROOT

    model_url, key_id = published
    path = [Path(__file__).parent / "fake_pynvml", Path(modelseal.__file__).parents[1], ROOT]
    pythonpath = os.pathsep.join(str(p) for p in path)
    gpu = env.gpu.save(tmp_path / "gpu.json")

    def load(dest: Path, measurements: dict[str, str]) -> tuple[int, str]:
        argv = ["load", "--model", model_url, "--dest", str(dest), "--allow-disk"]
        argv += ["--tee", "mock-tdx+nvidia", "--mock-tdx-dir", str(env.tdx_dir)]
        extra = {
            "PYTHONPATH": pythonpath,
            "FAKE_NVML_GPU": str(gpu),
            "FAKE_NVML_MEASUREMENTS": json.dumps(measurements),
        }
        done = run_cli(argv, env=extra, timeout=120)
        return done.returncode, done.stderr

    code, err = load(tmp_path / "released", {})
    assert code == 0, err
    assert (tmp_path / "released" / "model.safetensors").read_bytes() == bytes(range(256)) * 64
    rows = [r for r in offline_audit_entries(env.data_dir) if r.key_id == key_id]
    assert rows[-1].decision == "allow"

    other = bytearray(MEASURED[2])
    other[-1] ^= 1
    code, err = load(tmp_path / "denied", {"2": bytes(other).hex()})
    assert code == 4, err
    assert f"the KBS denied the release of {key_id}" in err  # the reasons stay in the audit
    assert not (tmp_path / "denied" / "model.safetensors").exists()
    assert any("gpu0: no measurements entry matched" in r for r in _last_denial(env, key_id))
