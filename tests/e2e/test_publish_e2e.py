"""``modelseal publish`` against a real registry and a real KBS (uvicorn on 127.0.0.1).

The published blobs are downloaded back and decrypted with the DEK obtained the way a TEE
obtains it: RCAR with the (dev-only) sample TEE against the KBS, which releases it under the
published policy. Resumption is exercised with and without ``--save-key``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import certifi
import httpx
import pytest

from modelseal.cli import main
from modelseal.crypto.secret import SecretBytes
from modelseal.format import cnap
from modelseal.loader.kbs_client import KbsClient
from modelseal.owner.kbs_admin import KbsAdminClient
from modelseal.owner.keys import read_key_file
from modelseal.owner.sealing import unseal_directory
from modelseal.policy import parse_policy
from modelseal.protocol.model_info import ModelInfo
from modelseal.tee.sample.attester import Attester
from tests.conftest import free_port
from tests.e2e.test_registry_http import CLI, RegistryServer, start_registry

pytestmark = pytest.mark.e2e

SAMPLE_POLICY = {"apiVersion": "modelseal/v1", "kind": "ReleasePolicy", "tee": ["sample"]}


@dataclass
class KbsServer:
    url: str
    data_dir: Path
    proc: subprocess.Popen[bytes]
    token: str

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_kbs(data_dir: Path) -> KbsServer:
    port = free_port()
    proc = subprocess.Popen(
        [
            *CLI,
            "kbs",
            "serve",
            "--data-dir",
            str(data_dir),
            "--port",
            str(port),
            "--insecure-allow-sample",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise RuntimeError(f"kbs exited with {proc.returncode}: {err}")
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("kbs did not start")
        time.sleep(0.05)
    # minted in this process (same CLI code, no second interpreter start-up)
    minted = _cli(
        ["kbs", "token", "--data-dir", str(data_dir), "--role", "publisher",
         "--namespace", "models", "--namespace", "cnap"]
    )  # fmt: skip
    assert minted.returncode == 0, minted.stderr
    return KbsServer(url=url, data_dir=data_dir, proc=proc, token=minted.stdout.strip())


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RegistryServer, KbsServer]]:
    root = tmp_path_factory.mktemp("publish")
    with ThreadPoolExecutor(2) as pool:  # both servers boot at the same time
        reg_f = pool.submit(start_registry, root / "registry")
        kbs_f = pool.submit(start_kbs, root / "kbs")
    try:
        registry, kbs = reg_f.result(), kbs_f.result()
    except BaseException:
        for f in (reg_f, kbs_f):
            if f.exception() is None:
                f.result().stop()
        raise
    try:
        yield registry, kbs
    finally:
        kbs.stop()
        registry.stop()


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(SAMPLE_POLICY))
    return path


def _model_dir(root: Path) -> dict[str, bytes]:
    files = {
        "model.safetensors": os.urandom(300_000),
        "config.json": b'{"hidden": 8}',
        "tokenizer/vocab.txt": b"a\nb\nc\n",
        "empty.bin": b"",
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


class _Terminal(io.StringIO):
    """A stderr that says it is a terminal, so the rich progress bars run."""

    def isatty(self) -> bool:
        return True


def _cli(argv: list[str], *, in_process: bool = True, tty: bool = False) -> Ran:
    """Run ``modelseal ARGV``: in this process (fast), or as a real subprocess."""
    if not in_process:
        done = subprocess.run([*CLI, *argv], capture_output=True, text=True, timeout=120)
        return Ran(done.returncode, done.stdout, done.stderr)
    out, err = io.StringIO(), (_Terminal() if tty else io.StringIO())
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return Ran(code, out.getvalue(), err.getvalue())


def _publish(
    registry: RegistryServer,
    kbs_url: str,
    token: str,
    src: Path,
    *args: str,
    staging: Path,
    in_process: bool = True,
    tty: bool = False,
) -> Ran:
    argv = ["publish", str(src), "--registry", registry.url, "--kbs-url", kbs_url, "--token", token]
    argv += ["--registry-token", registry.token, "--staging-dir", str(staging)]
    return _cli([*argv, "--segment-size", "64K", *args], in_process=in_process, tty=tty)


def _release_key(kbs: KbsServer, key_id: str) -> SecretBytes:
    """The DEK as a TEE gets it: RCAR with the sample attester, under the published policy."""
    with KbsClient(kbs.url, Attester(), tee="sample") as client:
        return client.get_resource(key_id)


def _download_model(info: ModelInfo, dest: Path) -> None:
    dest.mkdir()
    assert info.manifest_url is not None
    urls = [info.manifest_url, *(f.url for f in info.files)]
    for url in urls:
        rel = url.split(f"/blobs/{info.id}/{info.version}/", 1)[1]
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(httpx.get(url).content)


def test_publish_directory_then_decrypt_with_released_key(
    servers: tuple[RegistryServer, KbsServer], tmp_path: Path, policy_file: Path
) -> None:
    registry, kbs = servers
    src = tmp_path / "model"
    files = _model_dir(src)
    staging = tmp_path / "staging"
    done = _publish(
        registry, kbs.url, kbs.token, src, "--model-id", "demo", "--policy", str(policy_file),
        "--dtype", "float32", staging=staging, in_process=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    info = ModelInfo.from_json(done.stdout)
    assert info.format == "modelseal/v1"
    assert info.key_id == "models/demo/v1"
    assert info.kbs == "trustee"
    assert info.kbs_url == kbs.url
    assert info.framework is None  # mixed file types: no guess
    assert info.dtype == "float32"
    assert sorted(f.path for f in info.files) == sorted(files)
    assert not staging.exists()
    # the registry serves the same record
    served = ModelInfo.from_json(httpx.get(f"{registry.url}/models/demo").content)
    assert served == info
    # the KBS knows the key with the model digest and the published policy
    with KbsAdminClient(kbs.url, kbs.token) as admin:
        key = admin.get_key("models/demo/v1")
    assert key.model_digest == info.model_digest
    assert key.policy_digest == parse_policy(SAMPLE_POLICY).digest
    assert key.state == "active"
    # a TEE gets the key released
    dek = _release_key(kbs, "models/demo/v1")
    sealed = tmp_path / "sealed"
    _download_model(info, sealed)
    result = unseal_directory(sealed, tmp_path / "plain", dek)
    assert result.model_digest == info.model_digest
    for rel, data in files.items():
        assert (tmp_path / "plain" / rel).read_bytes() == data
    # versions are immutable
    again = _publish(
        registry, kbs.url, kbs.token, src, "--model-id", "demo", staging=tmp_path / "s2"
    )
    assert again.returncode == 2
    assert "already published" in again.stderr


def test_resume_with_save_key_skips_uploaded_blobs(
    servers: tuple[RegistryServer, KbsServer], tmp_path: Path, policy_file: Path
) -> None:
    registry, kbs = servers
    src = tmp_path / "model"
    files = _model_dir(src)
    staging = tmp_path / "staging"
    key_file = tmp_path / "dek.key"
    dead_kbs = f"http://127.0.0.1:{free_port()}"
    common = ["--model-id", "resumed", "--policy", str(policy_file), "--save-key", str(key_file)]
    first = _publish(registry, dead_kbs, kbs.token, src, *common, staging=staging)
    assert first.returncode == 75, first.stderr  # KBS unreachable after the uploads
    assert staging.is_dir()
    assert (key_file.stat().st_mode & 0o777) == 0o600
    assert httpx.get(f"{registry.url}/models/resumed").status_code == 404
    state = (staging / "state.json").read_text()
    assert read_key_file(key_file).reveal().hex() not in state
    second = _publish(registry, kbs.url, kbs.token, src, *common, staging=staging)
    assert second.returncode == 0, second.stderr
    assert "resuming" in second.stderr
    assert "0 blob(s) uploaded" in second.stderr
    assert f"{len(files) + 1} skipped" in second.stderr
    assert not staging.exists()
    info = ModelInfo.from_json(second.stdout)
    dek = read_key_file(key_file)
    assert _release_key(kbs, info.key_id or "").reveal() == dek.reveal()
    _download_model(info, tmp_path / "sealed")
    unseal_directory(tmp_path / "sealed", tmp_path / "plain", dek)
    for rel, data in files.items():
        assert (tmp_path / "plain" / rel).read_bytes() == data


def test_rerun_without_save_key_starts_over(
    servers: tuple[RegistryServer, KbsServer], tmp_path: Path, policy_file: Path
) -> None:
    registry, kbs = servers
    src = tmp_path / "model"
    files = _model_dir(src)
    staging = tmp_path / "staging"
    dead_kbs = f"http://127.0.0.1:{free_port()}"
    common = ["--model-id", "fresh", "--policy", str(policy_file)]
    first = _publish(registry, dead_kbs, kbs.token, src, *common, staging=staging)
    assert first.returncode == 75
    # without --save-key the DEK stays in memory: staging holds ciphertext and a key-free state
    left = {p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file()}
    assert left == {"state.json", *(f"sealed/{rel}.sealed" for rel in files)} | {
        p.relative_to(staging).as_posix() for p in (staging / "sealed").glob("*manifest*")
    }
    state = json.loads((staging / "state.json").read_text())
    assert not {"key", "dek", "secret"} & {k.lower() for k in state}
    sealed_before = {
        p.relative_to(staging / "sealed").as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in (staging / "sealed").rglob("*.sealed")
    }
    second = _publish(registry, kbs.url, kbs.token, src, *common, staging=staging)
    assert second.returncode == 0, second.stderr
    assert "discarding the previous staging directory" in second.stderr
    assert f"{len(files) + 1} blob(s) uploaded" in second.stderr
    info = ModelInfo.from_json(second.stdout)
    after = {f.path + ".sealed": f.sha256 for f in info.files}
    assert all(after[name] != sealed_before[name] for name in after)  # new key, new ciphertext
    dek = _release_key(kbs, "models/fresh/v1")
    _download_model(info, tmp_path / "sealed")
    unseal_directory(tmp_path / "sealed", tmp_path / "plain", dek)
    assert (tmp_path / "plain" / "model.safetensors").read_bytes() == files["model.safetensors"]


def test_progress_bars_on_a_terminal(
    servers: tuple[RegistryServer, KbsServer], tmp_path: Path, policy_file: Path
) -> None:
    """On a terminal every phase shows as a rich bar on stderr; stdout stays pure JSON."""
    registry, kbs = servers
    src = tmp_path / "model"
    _model_dir(src)
    done = _publish(
        registry, kbs.url, kbs.token, src, "--model-id", "bars", "--policy", str(policy_file),
        staging=tmp_path / "staging", tty=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    ModelInfo.from_json(done.stdout)  # nothing but the model info on stdout
    assert "\x1b[" not in done.stdout
    for phase in ("seal", "upload", "register key", "register model"):
        assert phase in done.stderr
    assert "━" in done.stderr  # rich's bar glyph: bars, not the plain one-line-per-phase form
    assert "upload..." not in done.stderr


def test_single_file_v1_and_cnap(
    servers: tuple[RegistryServer, KbsServer], tmp_path: Path, policy_file: Path
) -> None:
    registry, kbs = servers
    weights = tmp_path / "w.safetensors"
    data = os.urandom(200_000)
    weights.write_bytes(data)
    one = _publish(
        registry, kbs.url, kbs.token, weights, "--model-id", "single", "--policy",
        str(policy_file), staging=tmp_path / "s1",
    )  # fmt: skip
    assert one.returncode == 0, one.stderr
    info = ModelInfo.from_json(one.stdout)
    assert info.framework == "safetensors"
    assert [f.path for f in info.files] == ["w.safetensors"]
    assert info.url == info.files[0].url
    assert info.model_digest is not None
    dek = _release_key(kbs, "models/single/v1")
    _download_model(info, tmp_path / "sealed")
    unseal_directory(tmp_path / "sealed", tmp_path / "plain", dek)
    assert (tmp_path / "plain" / "w.safetensors").read_bytes() == data

    legacy = _publish(
        registry, kbs.url, kbs.token, weights, "--model-id", "legacy", "--format", "cnap",
        "--key-id", "cnap/keys/legacy", "--policy", str(policy_file), staging=tmp_path / "s2",
    )  # fmt: skip
    assert legacy.returncode == 0, legacy.stderr
    linfo = ModelInfo.from_json(legacy.stdout)
    assert linfo.format == "cnap"
    assert linfo.kbs == "simple_kbs"
    assert linfo.kbs_url == f"{kbs.url}/kbs/v1/keys/cnap/keys/legacy/transfer"
    assert linfo.manifest_url is None
    assert linfo.model_digest is None
    assert linfo.url.endswith("/blobs/legacy/v1/w.safetensors.enc")
    key = _release_key(kbs, "cnap/keys/legacy")
    assert cnap.decode(key, httpx.get(linfo.url).content) == data


def test_auth_and_input_errors_have_exit_codes(
    servers: tuple[RegistryServer, KbsServer], tmp_path: Path
) -> None:
    registry, kbs = servers
    src = tmp_path / "f.bin"
    src.write_bytes(b"x" * 10)
    base = ["publish", str(src), "--registry", registry.url, "--kbs-url", kbs.url]
    staging = ["--staging-dir", str(tmp_path / "st")]
    wrong_registry_token = _cli(
        [*base, "--token", kbs.token, "--model-id", "x", "--registry-token", "nope", *staging]
    )
    assert wrong_registry_token.returncode == 4, wrong_registry_token.stderr
    wrong_kbs_token = _cli(
        [*base, "--token", "nope", "--model-id", "y", "--registry-token", registry.token, *staging]
    )
    assert wrong_kbs_token.returncode == 4, wrong_kbs_token.stderr
    assert httpx.get(f"{registry.url}/models/y").status_code == 404
    unused = tmp_path / "unused"
    no_registry_token = _cli(
        [*base, "--token", kbs.token, "--model-id", "t", "--staging-dir", str(unused)]
    )
    assert no_registry_token.returncode == 2
    assert "--registry-token" in no_registry_token.stderr
    assert not unused.exists()  # refused before sealing anything
    busy = tmp_path / "busy"
    with open(tmp_path / "busy.lock", "w") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        concurrent = _cli(
            [*base, "--token", kbs.token, "--model-id", "c", "--registry-token", registry.token,
             "--staging-dir", str(busy)]
        )  # fmt: skip
    assert concurrent.returncode == 2
    assert "another publish" in concurrent.stderr
    bad_id = _cli([*base, "--token", kbs.token, "--model-id", "../x", *staging])
    assert bad_id.returncode == 2
    assert "invalid model id" in bad_id.stderr
    bad_key_id = _cli([*base, "--token", kbs.token, "--model-id", "k", "--key-id", "a/b", *staging])
    assert bad_key_id.returncode == 2
    missing = _cli(["publish", str(tmp_path / "nope"), "--registry", registry.url, "--kbs-url",
                    kbs.url, "--token", kbs.token, "--model-id", "z"])  # fmt: skip
    assert missing.returncode == 2
    bad_policy = tmp_path / "p.json"
    bad_policy.write_text('{"apiVersion": "modelseal/v1", "kind": "ReleasePolicy", "tee": []}')
    denied = _cli([*base, "--token", kbs.token, "--model-id", "p", "--policy", str(bad_policy),
                   "--registry-token", registry.token, *staging])  # fmt: skip
    assert denied.returncode == 2
    assert httpx.get(f"{registry.url}/models/p").status_code == 404


def test_resume_with_changed_source_reseals_with_the_saved_key(
    servers: tuple[RegistryServer, KbsServer], tmp_path: Path, policy_file: Path
) -> None:
    registry, kbs = servers
    src = tmp_path / "model"
    files = _model_dir(src)
    staging = tmp_path / "staging"
    key_file = tmp_path / "dek.key"
    dead_kbs = f"http://127.0.0.1:{free_port()}"
    common = ["--model-id", "changed", "--policy", str(policy_file), "--save-key", str(key_file)]
    assert _publish(registry, dead_kbs, kbs.token, src, *common, staging=staging).returncode == 75
    (src / "config.json").write_bytes(b'{"hidden": 16}')
    files["config.json"] = b'{"hidden": 16}'
    again = _publish(registry, kbs.url, kbs.token, src, *common, staging=staging)
    assert again.returncode == 0, again.stderr
    assert "resuming" not in again.stderr
    assert "discarding the previous staging directory" in again.stderr
    info = ModelInfo.from_json(again.stdout)
    dek = read_key_file(key_file)
    assert _release_key(kbs, "models/changed/v1").reveal() == dek.reveal()
    _download_model(info, tmp_path / "sealed")
    unseal_directory(tmp_path / "sealed", tmp_path / "plain", dek)
    for rel, data in files.items():
        assert (tmp_path / "plain" / rel).read_bytes() == data


def test_retired_kbs_and_ca_spellings_still_publish_with_one_note_each(
    servers: tuple[RegistryServer, KbsServer], tmp_path: Path
) -> None:
    """``--kbs`` and ``--ca`` became ``--kbs-url`` and ``--kbs-ca``/``--registry-ca``
    (the loader's names); the old spellings keep working and say so once."""
    registry, kbs = servers
    src = tmp_path / "f.bin"
    src.write_bytes(b"y" * 100)
    bundle = certifi.where()  # a real bundle, unused: both servers are plain http
    ran = _cli(
        ["publish", str(src), "--registry", registry.url, "--kbs", kbs.url, "--ca", bundle,
         "--token", kbs.token, "--registry-token", registry.token, "--model-id", "retired",
         "--staging-dir", str(tmp_path / "st")]
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert ran.stderr.count("note: --kbs is deprecated; use --kbs-url") == 1
    assert ran.stderr.count("note: --ca is deprecated; use --kbs-ca and --registry-ca") == 1
    assert httpx.get(f"{registry.url}/models/retired").status_code == 200
    missing = _cli(["publish", str(src), "--registry", registry.url, "--token", kbs.token,
                    "--model-id", "nokbs"])  # fmt: skip
    assert missing.returncode == 2
    assert "--kbs-url" in missing.stderr


def test_hidden_names_reach_the_registry_as_opaque_padded_blobs_and_still_load(
    servers: tuple[RegistryServer, KbsServer], tmp_path: Path, policy_file: Path
) -> None:
    """``publish --hide-names``: the model info, the blob names and every sealed header the
    registry holds name no plaintext file and state no plaintext size; the loader (files),
    the SDK (memory) and ``unseal`` still give back every file byte for byte."""
    from modelseal import LoaderSettings, open_model
    from modelseal.format.manifest import hidden_size
    from modelseal.format.v1 import parse_head
    from modelseal.loader.loader import load_model

    registry, kbs = servers
    src = tmp_path / "model"
    files = _model_dir(src)
    done = _publish(
        registry, kbs.url, kbs.token, src, "--model-id", "hidden", "--policy", str(policy_file),
        "--hide-names", staging=tmp_path / "staging",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    served = httpx.get(f"{registry.url}/models/hidden").text
    info = ModelInfo.from_json(served)
    words = {part for rel in files for part in (rel, *rel.split("/"), Path(rel).suffix)}
    words.discard("")
    # the manifest's own (fixed, public) name is the one name a registry may see
    leaks = sorted(w for w in words if w in served.replace("modelseal-manifest.json", ""))
    assert leaks == [], f"the model info names plaintext files: {leaks}"
    assert str(len(files["model.safetensors"])) not in served
    assert info.framework is None  # no guess from a suffix the registry never saw
    sizes = sorted(len(data) for data in files.values())
    headers = []
    for f in info.files:
        blob = httpx.get(f.url).content
        header, _ = parse_head(blob, len(blob))
        text = json.dumps(header.to_json())
        assert [w for w in words if w in text] == [], text
        assert header.path == f.path
        assert f.url.endswith(f"/{header.path}.sealed")
        headers.append(header.size)
    assert sorted(headers) == sorted(hidden_size(n) for n in sizes)
    assert not set(headers) & set(sizes)  # no header states a plaintext size
    # loader: files on disk under their real names
    dest = tmp_path / "dest"
    settings = LoaderSettings(
        model=f"{registry.url}/models/hidden", tee="sample", dest=dest, allow_disk=True
    )
    receipt = load_model(settings)
    assert receipt.model_digest == info.model_digest
    for rel, data in files.items():
        assert (dest / rel).read_bytes() == data
    # SDK: the same files in memory
    with open_model(
        settings=LoaderSettings(model=f"{registry.url}/models/hidden"), tee="sample"
    ) as model:
        assert {rel: bytes(model[rel]) for rel in model} == files
    # owner tools with the released key
    dek = _release_key(kbs, "models/hidden/v1")
    _download_model(info, tmp_path / "sealed")
    result = unseal_directory(tmp_path / "sealed", tmp_path / "plain", dek)
    assert result.model_digest == info.model_digest
    for rel, data in files.items():
        assert (tmp_path / "plain" / rel).read_bytes() == data
