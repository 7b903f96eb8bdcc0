"""Name -> implementation maps for attesters and verifiers, imported lazily.

Lazy imports keep verifier code (and its dependencies) out of the loader inside the TEE.
"""

from __future__ import annotations

import importlib
from typing import Any

from modelseal.errors import UnsupportedTee
from modelseal.tee.base import Attester, Verifier, VerifierConfig

#: kind -> package under ``modelseal.tee``
KINDS: dict[str, str] = {
    "sample": "sample",
    "tdx": "tdx",
    "mock-tdx": "mock_tdx",
    "snp": "snp",
    "tpm": "tpm",
    "sgx": "tdx.sgx",
}


def _module(kind: str, role: str) -> Any:
    pkg = KINDS.get(kind)
    if pkg is None:
        raise UnsupportedTee(f"unknown TEE kind {kind!r}; known: {', '.join(sorted(KINDS))}")
    try:
        return importlib.import_module(f"modelseal.tee.{pkg}.{role}")
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("modelseal."):
            raise UnsupportedTee(f"TEE kind {kind!r} has no {role} in this build") from exc
        raise UnsupportedTee(f"TEE kind {kind!r} needs a missing package: {exc.name}") from exc


def verifier_for(kind: str, config: VerifierConfig) -> Verifier:
    """Build the verifier of ``kind``; raises ``UnsupportedTee`` if unknown or not allowed.

    The verifier's own kind must be ``kind``: :meth:`Verifier.verify` then refuses claims
    of any other kind, so evidence is only ever accepted as the kind the session named.
    """
    verifier: Verifier = _module(kind, "verifier").Verifier.from_config(config)
    if verifier.tee != kind:
        raise UnsupportedTee(f"the verifier registered for {kind!r} verifies {verifier.tee!r}")
    return verifier


def attester_for(kind: str, **options: Any) -> Attester:
    """Build the attester of ``kind`` (``options`` are kind-specific)."""
    attester: Attester = _module(kind, "attester").Attester(**options)
    return attester
