"""HOST_DATA <-> init-data binding, as Trustee does it for SNP.

The init-data TOML declares ``algorithm`` (sha256/sha384/sha512); its digest over the raw
document bytes is "regularized" to HOST_DATA's 32 bytes (zero-padded or truncated).
"""

from __future__ import annotations

import hashlib
import tomllib
from collections.abc import Mapping

from modelseal.errors import EvidenceError

_HASHES = {"sha256": hashlib.sha256, "sha384": hashlib.sha384, "sha512": hashlib.sha512}
MAX_INIT_DATA = 256 * 1024


def host_data_binding(init_data: bytes, size: int) -> tuple[bytes, str, dict[str, str]]:
    """(expected HOST_DATA, digest hex, ``[data]`` table) for a raw init-data document."""
    if len(init_data) > MAX_INIT_DATA:
        raise EvidenceError("init-data document is too large")
    try:
        doc = tomllib.loads(init_data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise EvidenceError("init-data is not a valid TOML document") from exc
    algorithm = doc.get("algorithm")
    fn = _HASHES.get(algorithm) if isinstance(algorithm, str) else None
    if fn is None:
        raise EvidenceError("init-data algorithm must be sha256, sha384 or sha512")
    data = doc.get("data", {})
    if not isinstance(data, Mapping) or not all(isinstance(v, str) for v in data.values()):
        raise EvidenceError("init-data [data] must map names to strings")
    digest = fn(init_data).digest()
    return digest[:size].ljust(size, b"\x00"), digest.hex(), {str(k): v for k, v in data.items()}
