"""RFC 8785 (JCS) canonical JSON: the only way bytes-to-be-hashed are produced from JSON."""

from __future__ import annotations

from typing import Any

import rfc8785


def canonical_json(value: Any) -> bytes:
    """Serialize ``value`` as RFC 8785 canonical JSON bytes."""
    return rfc8785.dumps(value)
