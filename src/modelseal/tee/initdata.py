"""Init-data: the launch-time workload description a TEE is bound to (Trustee-compatible).

The document is TOML (``kbs/docs/initdata.md`` in Trustee)::

    version = "0.1.0"
    algorithm = "sha384"          # sha256 | sha384 | sha512
    [data]
    model_digest = "sha256:..."   # any workload facts; policies can require them

Its digest is the declared hash over the document's raw bytes, exactly as sent (never
re-serialized). The host sets it at launch into a field the hardware attests: TDX
MRCONFIGID (48 B), SNP HOST_DATA (32 B). The digest is zero-padded (or truncated) to the
field size, as Trustee does; the base verifier (:mod:`modelseal.tee.base`) compares it in
constant time. After the check, the ``[data]`` table becomes ``Claims.init_data`` and the
digest ``Claims.init_data_digest``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from modelseal._internal.bounded import load_toml
from modelseal.errors import EvidenceError, FormatError

#: Init-data larger than this is refused (it travels in every attestation request).
MAX_INIT_DATA = 256 * 1024
#: Arrays/inline tables nested deeper than this are refused (claims are flat facts).
MAX_DEPTH = 16
ALGORITHMS = {"sha256": hashlib.sha256, "sha384": hashlib.sha384, "sha512": hashlib.sha512}


@dataclass(frozen=True)
class InitData:
    version: str
    algorithm: str
    data: dict[str, str]
    digest: bytes

    @property
    def digest_hex(self) -> str:
        return self.digest.hex()


def _claim_value(value: Any) -> str:
    """Strings stay as they are; other TOML values become canonical JSON text."""
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def parse_init_data(raw: bytes | str) -> InitData:
    """Parse and hash an init-data document; malformed input -> EvidenceError.

    Size and depth are capped (``_internal/bounded.py``) before anything walks the
    document: it comes from the guest, so a KBS must treat it as hostile.
    """
    body = raw.encode("utf-8") if isinstance(raw, str) else bytes(raw)
    try:
        doc = load_toml(body, what="init-data", max_bytes=MAX_INIT_DATA, max_depth=MAX_DEPTH)
    except FormatError as exc:
        raise EvidenceError(str(exc)) from None
    version = doc.get("version")
    algorithm = doc.get("algorithm")
    data = doc.get("data", {})
    if not isinstance(version, str):
        raise EvidenceError("init-data: 'version' must be a string")
    if algorithm not in ALGORITHMS:
        raise EvidenceError(f"init-data: 'algorithm' must be one of {', '.join(ALGORITHMS)}")
    if not isinstance(data, dict):
        raise EvidenceError("init-data: [data] must be a table")
    return InitData(
        version=version,
        algorithm=algorithm,
        data={str(k): _claim_value(v) for k, v in data.items()},
        digest=ALGORITHMS[algorithm](body).digest(),
    )


def init_data_field(raw: bytes | str, size: int) -> bytes:
    """The launch-field value a host must set for this document (attesters, mocks, docs)."""
    return parse_init_data(raw).digest[:size].ljust(size, b"\x00")
