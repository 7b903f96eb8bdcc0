"""modelseal: seal AI models; release keys only to attested TEEs; load them in memory.

The flow and the modules that perform each step:

1. seal       ``modelseal.format`` (sealed file format v1, manifest, CNAP legacy)
2. register   ``modelseal.owner`` -> KBS admin API (``modelseal.kbs``, ``modelseal.keystore``)
3. serve      ``modelseal.registry`` + ``modelseal.blobstore`` (ciphertext only)
4. attest     ``modelseal.loader`` (RCAR client) -> ``modelseal.tee.<kind>`` -> KBS
5. release    ``modelseal.kbs`` -> ``modelseal.policy`` -> JWE to the TEE key
6. decrypt    ``modelseal.loader`` -> ``modelseal.format`` (verifies the manifest)
7. load       unchanged inference server reading the tmpfs directory, or the SDK

Supported API: the names in ``__all__`` of ``modelseal`` (the loader SDK below),
``modelseal.owner`` (seal, verify, publish), ``modelseal.clients`` (KBS admin, KBS
attestation and registry clients) and ``modelseal.errors`` (the error tree with exit
codes). They stay compatible across minor releases; every other module and name is
internal and may change without notice.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

#: SDK names exported lazily, so ``import modelseal`` stays light (no httpx, numpy, crypto)
_LAZY = {
    "open_model": "modelseal.loader.sdk",
    "load_safetensors": "modelseal.loader.sdk",
    "decrypt_file": "modelseal.loader.sdk",
    "DecryptedModel": "modelseal.loader.sdk",
    "LoaderSettings": "modelseal.loader.settings",
    "load_model": "modelseal.loader.loader",
}

__all__ = [
    "DecryptedModel",
    "LoaderSettings",
    "__version__",
    "decrypt_file",
    "load_model",
    "load_safetensors",
    "open_model",
]


def __getattr__(name: str) -> Any:
    # Any, not object: callers use these names as functions and classes. (Importing them
    # under TYPE_CHECKING would make every module importing ``modelseal`` depend on the
    # loader in import-linter's eyes.)
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'modelseal' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
