"""The supported API is exactly these names: adding, removing or renaming one is a decision.

Each facade module lists its names in a sorted ``__all__``; every name resolves and carries
its own docstring (a dataclass's generated ``Name(field, ...)`` signature does not count).
"""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

PUBLIC_API: dict[str, set[str]] = {
    "modelseal": {
        "DecryptedModel",
        "LoaderSettings",
        "__version__",
        "decrypt_file",
        "load_model",
        "load_safetensors",
        "open_model",
    },
    "modelseal.clients": {
        "AsyncAttestedTransport",
        "AttestedTransport",
        "KbsAdminClient",
        "KbsClient",
        "KeyConflictError",
        "RegistryClient",
        "RegistryConflict",
    },
    "modelseal.errors": {
        "AttestationError",
        "AuthorizationError",
        "BackendError",
        "BlobNotFound",
        "CollateralMissing",
        "ConfigError",
        "DecryptionError",
        "DestinationTooSmall",
        "Error",
        "EvidenceError",
        "FormatError",
        "IntegrityError",
        "KeyNotFound",
        "ModelNotFound",
        "NotFound",
        "PolicyDenied",
        "TokenError",
        "TransientError",
        "UnsafeDestination",
        "UnsupportedTee",
    },
    "modelseal.owner": {
        "KeyRegistrar",
        "PublishProgress",
        "PublishRequest",
        "PublishResult",
        "SealOptions",
        "SealedFile",
        "SealedModel",
        "UnsealResult",
        "generate_key",
        "inspect",
        "progress_total",
        "publish",
        "read_key_file",
        "seal",
        "unseal",
        "verify",
        "write_key_file",
    },
}

#: facades whose names resolve on first use (PEP 562); the others import them eagerly
LAZY = {"modelseal", "modelseal.owner"}


def _own_doc(value: object, name: str) -> str:
    """The docstring the object itself defines (not one inherited from a base class)."""
    doc = vars(value).get("__doc__") if isinstance(value, type) else value.__doc__
    if not isinstance(doc, str) or doc.startswith(f"{name}("):
        return ""
    return doc.strip()


@pytest.mark.parametrize("module_name", sorted(PUBLIC_API))
def test_exported_names_are_pinned(module_name: str) -> None:
    module = importlib.import_module(module_name)
    exported = module.__all__
    assert set(exported) == PUBLIC_API[module_name]
    assert exported == sorted(set(exported)), "__all__ must be sorted, without duplicates"
    assert "supported" in (module.__doc__ or "").lower() or module_name == "modelseal.errors"


@pytest.mark.parametrize("module_name", sorted(PUBLIC_API))
def test_every_export_resolves_and_is_documented(module_name: str) -> None:
    module = importlib.import_module(module_name)
    undocumented = [
        name
        for name in module.__all__
        if not name.startswith("__") and not _own_doc(getattr(module, name), name)
    ]
    assert undocumented == []


@pytest.mark.parametrize("module_name", sorted(set(PUBLIC_API) - LAZY))
def test_eager_facades_define_nothing_public_outside_all(module_name: str) -> None:
    module = importlib.import_module(module_name)
    # classes and functions of modelseal's own, not typing helpers the module imported
    public = {
        name
        for name, value in vars(module).items()
        if not name.startswith("_") and getattr(value, "__module__", "").startswith("modelseal.")
    }
    assert public <= set(module.__all__)


@pytest.mark.parametrize("module_name", sorted(LAZY))
def test_lazy_facades_refuse_unknown_names(module_name: str) -> None:
    module = importlib.import_module(module_name)
    with pytest.raises(AttributeError, match="no_such_name"):
        _ = module.no_such_name


def test_owner_facade_keeps_sealing_free_of_http_clients() -> None:
    """``modelseal seal`` imports the sealing code through the package; the facade must not
    drag in ``publish`` and httpx with it."""
    code = (
        "import json, sys, modelseal.owner, modelseal.owner.sealing; "
        "print(json.dumps(sorted(sys.modules)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    modules = set(json.loads(done.stdout))
    assert "httpx" not in modules
    assert "modelseal.owner.publish" not in modules


def test_api_reference_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The example in docs/reference/api.md is run as written (in an empty directory)."""
    text = (Path(__file__).parents[2] / "docs" / "reference" / "api.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    assert len(blocks) == 1
    monkeypatch.chdir(tmp_path)
    exec(compile(blocks[0], "docs/reference/api.md", "exec"), {})
    assert (tmp_path / "model.sealed").is_dir()
    assert (tmp_path / "model.key").stat().st_mode & 0o777 == 0o600


def test_the_loader_api_names_no_tee_kind_option() -> None:
    """``open_model``'s keywords and ``LoaderSettings``' fields are public too: a TEE kind's
    attester input (a test CA directory, a metadata or Attestation Agent URL) travels in
    ``tee_options`` by the name its kind declares, never as a keyword of its own."""
    import dataclasses
    import inspect

    import modelseal

    assert list(inspect.signature(modelseal.open_model).parameters) == [
        "model_url",
        "settings",
        "tee",
        "kbs_url",
        "kbs_ca",
        "registry_ca",
        "workers",
        "model_digest",
        "tee_options",
        "init_data",
        "release",
        "on_progress",
        "timeout",
        "key_source",
        "cdh_url",
        "measure",
    ]
    fields = [f.name for f in dataclasses.fields(modelseal.LoaderSettings)]
    assert "tee_options" in fields
    assert not {"mock_tdx_dir", "azure_imds_url", "aa_url"} & set(fields)
