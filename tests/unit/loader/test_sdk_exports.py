"""``import modelseal`` stays light; the SDK names resolve lazily to the loader's."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import modelseal


def test_import_modelseal_pulls_no_heavy_dependency() -> None:
    code = "import json, sys, modelseal; print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    modules = set(json.loads(done.stdout))
    assert not {"httpx", "numpy", "cryptography", "pydantic"} & modules
    assert not [m for m in modules if m.startswith("modelseal.loader")]


def test_lazy_names_resolve() -> None:
    from modelseal.loader import loader, sdk

    assert modelseal.open_model is sdk.open_model
    assert modelseal.load_safetensors is sdk.load_safetensors
    assert modelseal.decrypt_file is sdk.decrypt_file
    assert modelseal.DecryptedModel is sdk.DecryptedModel
    assert modelseal.load_model is loader.load_model
    with pytest.raises(AttributeError, match="no attribute"):
        _ = modelseal.no_such_name  # type: ignore[attr-defined]
