"""``modelseal load`` reads every variable of docs/guides/loader.md and stays lean as a process."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from modelseal.cli import main
from modelseal.errors import UnsupportedTee
from modelseal.loader import loader as loader_module
from modelseal.loader.destination import FileModes
from modelseal.loader.settings import LoaderSettings
from tests.hostile_http import model_info, padded_sealed_blob
from tests.unit.loader.blobserver import BlobServer

#: never imported into the loader process (see the import-linter contracts in pyproject.toml)
FORBIDDEN_ROOTS = {
    "rich",
    "pygments",
    "fastapi",
    "sqlalchemy",
    "uvicorn",
    "starlette",
    "pydantic",  # ~0.2 s of start-up: the loader's wire models are msgspec
}
FORBIDDEN_PREFIXES = (
    "modelseal.kbs",
    "modelseal.keystore",
    "modelseal.policy",
    "modelseal.registry",
    "modelseal.owner",
)


def _run(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], *args: str) -> LoaderSettings:
    seen: list[LoaderSettings] = []

    def fake_load(settings: LoaderSettings, **_options: object) -> object:
        seen.append(settings)
        raise SystemExit(0)

    monkeypatch.setattr(loader_module, "load_model", fake_load)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as info:
        main(["load", *args])
    assert info.value.code == 0
    return seen[0]


def test_every_design_variable_is_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    ca = tmp_path / "kbs-ca.pem"
    ca.write_text("pem")
    init = tmp_path / "initdata.toml"
    init.write_text('version = "0.1.0"\nalgorithm = "sha384"\n[data]\n')
    settings = _run(
        monkeypatch,
        {
            "MODELSEAL_MODEL": "https://registry.example/models/m",
            "MODELSEAL_KBS_URL": "https://kbs.example:8080",
            "MODELSEAL_DEST": str(tmp_path / "dest"),
            "MODELSEAL_TEE": "tdx",
            "MODELSEAL_KBS_CA": str(ca),
            "MODELSEAL_REGISTRY_CA": str(ca),
            "MODELSEAL_ALLOW_DISK": "true",
            "MODELSEAL_WORKERS": "3",
            "MODELSEAL_MODEL_DIGEST": "sha256:" + "ab" * 32,
            "MODELSEAL_INIT_DATA": str(init),
            "MODELSEAL_FILE_MODE": "0600",
            "MODELSEAL_GROUP": "4242",
        },
    )
    assert settings.model == "https://registry.example/models/m"
    assert settings.kbs_url == "https://kbs.example:8080"
    assert settings.dest == tmp_path / "dest"
    assert settings.tee == "tdx"
    assert settings.kbs_verify == str(ca)
    assert settings.registry_verify == str(ca)
    assert settings.allow_disk is True
    assert settings.workers == 3
    assert settings.model_digest == "sha256:" + "ab" * 32
    assert settings.init_data == init
    assert settings.file_modes == FileModes(0o600, group=4242)


def test_defaults_and_flags_beat_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _run(monkeypatch, {"MODELSEAL_MODEL": "http://r/models/m"})
    assert settings.dest == Path("/models")
    assert settings.tee == "auto"
    assert settings.allow_disk is False
    settings = _run(
        monkeypatch,
        {"MODELSEAL_MODEL": "http://r/models/m", "MODELSEAL_ALLOW_DISK": "1"},
        "--model",
        "http://other/models/x",
        "--no-allow-disk",
    )
    assert settings.model == "http://other/models/x"
    assert settings.allow_disk is False


@pytest.mark.parametrize(
    "env",
    [
        {"MODELSEAL_ALLOW_DISK": "maybe"},  # a typo must not enable plaintext on disk
        {"MODELSEAL_WORKERS": "many"},
        {"MODELSEAL_KBS_CA": "/nonexistent/ca.pem"},
        {"MODELSEAL_MODEL_DIGEST": "sha256:XYZ"},
        {"MODELSEAL_MODEL": "file:///etc/passwd"},
        {"MODELSEAL_FILE_MODE": "0666"},  # world-writable plaintext
        {"MODELSEAL_FILE_MODE": "0755"},  # executable plaintext
        {"MODELSEAL_FILE_MODE": "rw-r-----"},
        {"MODELSEAL_GROUP": "no-such-group-modelseal"},
    ],
)
def test_bad_variables_exit_2(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    monkeypatch.setenv("MODELSEAL_MODEL", "http://r/models/m")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(loader_module, "load_model", pytest.fail)
    with pytest.raises(SystemExit) as info:
        main(["load", "--dest", "/dev/shm/never"])
    assert info.value.code == 2


def test_loader_process_imports_no_server_or_rich_code(tmp_path: Path) -> None:
    """The real CLI in a fresh interpreter, as in the TEE: what ends up in sys.modules.

    import-linter checks our own imports; this also catches third-party ones (httpx
    pulls rich and pygments in through its optional command-line client).
    """
    code = (
        "import atexit, json, sys\n"
        # the KBS client stack loads lazily (at attestation): import it too before listing
        "atexit.register(lambda: (__import__('modelseal.loader.kbs_client'),"
        " print(json.dumps(sorted(sys.modules)))))\n"
        "from modelseal.cli import main\n"
        "main()\n"
    )
    with BlobServer().running() as server:  # answers 404: the load stops after model info
        args = ["--model", server.url + "/models/none", "--dest", str(tmp_path / "dest")]
        done = subprocess.run(
            [sys.executable, "-c", code, "load", *args, "--tee", "sample", "--allow-disk"],
            capture_output=True,
            text=True,
            timeout=60,
            env={"PATH": "/usr/bin:/bin", "NO_PROXY": "127.0.0.1"},
        )
    assert done.returncode == 3, done.stderr
    modules = json.loads(done.stdout.splitlines()[-1])
    assert "modelseal.loader.loader" in modules  # the loader really was imported
    assert "modelseal.loader.kbs_client" in modules
    bad = [
        m
        for m in modules
        if m.split(".")[0] in FORBIDDEN_ROOTS
        or m.startswith(FORBIDDEN_PREFIXES)
        or (m.startswith("modelseal.tee.") and m.endswith(".verifier"))
    ]
    assert bad == []


def test_quiet_silences_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    """``-q``: the loader's retry notices and insecure-TEE warning are not shown."""
    root, package = logging.getLogger(), logging.getLogger("modelseal")
    level, package_level = root.level, package.level
    package.setLevel(logging.INFO)  # as `kbs serve` run earlier in this process leaves it
    enabled: list[bool] = []

    def fake_load(settings: LoaderSettings, **_options: object) -> object:
        enabled.append(logging.getLogger("modelseal.loader.attest").isEnabledFor(logging.WARNING))
        raise SystemExit(0)

    monkeypatch.setattr(loader_module, "load_model", fake_load)
    monkeypatch.setenv("MODELSEAL_MODEL", "http://r/models/m")
    try:
        for args in (["load"], ["load", "-q"]):
            with pytest.raises(SystemExit):
                main(args)
            root.setLevel(level)
            package.setLevel(logging.INFO)
    finally:
        root.setLevel(level)
        package.setLevel(package_level)
    assert enabled == [True, False]


def test_no_tee_detected_is_exit_2_naming_the_choices(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """On a development machine without TEE devices ``--tee auto`` is a usage error."""
    from modelseal.loader import attest

    def none() -> str:
        raise UnsupportedTee("no TEE detected: no /dev/tdx_guest")

    monkeypatch.setattr(attest, "detect", none)
    with BlobServer().running() as server:
        server.blobs["/models/m"] = json.dumps(model_info(server.url, 1)).encode()
        server.blobs["/f0"] = padded_sealed_blob(200, path="f0.bin")
        with pytest.raises(SystemExit) as info:
            main(["load", "--model", server.url + "/models/m", "--dest", str(tmp_path / "d"),
                  "--allow-disk"])  # fmt: skip
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--tee (MODELSEAL_TEE) accepts: auto, " in err
