"""Resource paths (= key ids) in Trustee's grammar: ``repo/type/tag``.

Each of the three segments matches ``[A-Za-z0-9_-][A-Za-z0-9_.-]*`` so ids are safe in URL
paths, file names and logs, and ``..`` or empty segments can never appear.
"""

from __future__ import annotations

import re

from modelseal.errors import ConfigError, FormatError
from modelseal.protocol.kbs import resource_path

__all__ = [
    "MAX_KEY_ID_LEN",
    "SEGMENT",
    "is_valid_key_id",
    "normalize_key_id",
    "validate_key_id",
    "validate_model_digest",
]

SEGMENT = r"[A-Za-z0-9_-][A-Za-z0-9_.-]*"
MAX_KEY_ID_LEN = 255
_KEY_ID = re.compile(rf"{SEGMENT}/{SEGMENT}/{SEGMENT}")
_MODEL_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


def is_valid_key_id(key_id: str) -> bool:
    return len(key_id) <= MAX_KEY_ID_LEN and _KEY_ID.fullmatch(key_id) is not None


def validate_key_id(key_id: str) -> str:
    """Return ``key_id`` unchanged, or raise ConfigError naming the rule it breaks."""
    if not is_valid_key_id(key_id):
        shown = key_id if len(key_id) <= 80 and key_id.isprintable() else "<invalid>"
        raise ConfigError(
            f"invalid key id {shown!r}: expected repo/type/tag, each segment "
            f"[A-Za-z0-9_-][A-Za-z0-9_.-]*, at most {MAX_KEY_ID_LEN} characters"
        )
    return key_id


def normalize_key_id(key_id: str) -> str:
    """The stored ``repo/type/tag`` form of a key id given as ``repo/type/tag``,
    ``kbs:///repo/type/tag`` or a bare UUID (``default/key/<uuid>``); ConfigError otherwise."""
    try:
        path = resource_path(key_id)
    except FormatError as exc:
        shown = key_id if len(key_id) <= 80 and key_id.isprintable() else "<invalid>"
        raise ConfigError(f"invalid key id {shown!r}: {exc}") from None
    return validate_key_id(path)


def validate_model_digest(digest: str) -> str:
    """Normalize a model digest to ``sha256:<64 lower-case hex>`` or raise ConfigError."""
    lowered = digest.strip().lower()
    if not _MODEL_DIGEST.fullmatch(lowered):
        raise ConfigError('a model digest must be "sha256:" followed by 64 hex digits')
    return lowered
