"""Owner-side library: the supported API for scripting what ``modelseal`` commands do.

A model owner generates a key, seals a model, checks it, and publishes it (seal, upload the
ciphertext to the registry, register the key and release policy with the KBS)::

    from modelseal.owner import SealOptions, generate_key, publish, seal, write_key_file

The names in ``__all__`` are the supported interface, kept compatible across minor
releases. The submodules (``modelseal.owner.sealing``, ``.publish``, ``.outputs``, ...) are
internal and may change at any time. Names resolve on first use, so importing one
submodule (the CLI's ``seal`` imports only the sealing code) never pulls in the HTTP
clients that ``publish`` needs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from modelseal.owner.keys import generate_key, read_key_file, write_key_file
    from modelseal.owner.publish import (
        KeyRegistrar,
        PublishProgress,
        PublishRequest,
        PublishResult,
        publish,
    )
    from modelseal.owner.sealing import (
        SealedFile,
        SealedModel,
        SealOptions,
        UnsealResult,
        inspect,
        progress_total,
        seal,
        unseal,
        verify,
    )

#: public name -> the internal module that defines it
_EXPORTS = {
    "generate_key": "modelseal.owner.keys",
    "read_key_file": "modelseal.owner.keys",
    "write_key_file": "modelseal.owner.keys",
    "KeyRegistrar": "modelseal.owner.publish",
    "PublishProgress": "modelseal.owner.publish",
    "PublishRequest": "modelseal.owner.publish",
    "PublishResult": "modelseal.owner.publish",
    "publish": "modelseal.owner.publish",
    "SealOptions": "modelseal.owner.sealing",
    "SealedFile": "modelseal.owner.sealing",
    "SealedModel": "modelseal.owner.sealing",
    "UnsealResult": "modelseal.owner.sealing",
    "inspect": "modelseal.owner.sealing",
    "progress_total": "modelseal.owner.sealing",
    "seal": "modelseal.owner.sealing",
    "unseal": "modelseal.owner.sealing",
    "verify": "modelseal.owner.sealing",
}

__all__ = [
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
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'modelseal.owner' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # resolved once; later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
