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
import tomllib
from dataclasses import dataclass
from typing import Any

from modelseal.errors import EvidenceError

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


def _check_depth(doc: dict[str, Any]) -> None:
    """Iteratively, so a deep document is refused before anything recurses over it."""
    stack: list[tuple[Any, int]] = [(doc, 0)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise EvidenceError(f"init-data nests deeper than {MAX_DEPTH} levels")
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)


def parse_init_data(raw: bytes | str) -> InitData:
    """Parse and hash an init-data document; malformed input -> EvidenceError."""
    body = raw.encode("utf-8") if isinstance(raw, str) else bytes(raw)
    if len(body) > MAX_INIT_DATA:
        raise EvidenceError(f"init-data too large ({len(body)} bytes > {MAX_INIT_DATA})")
    try:
        doc = tomllib.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise EvidenceError(f"init-data is not valid TOML: {exc}") from exc
    except RecursionError:  # tomllib recurses per nesting level; the KBS must not crash
        raise EvidenceError(f"init-data nests deeper than {MAX_DEPTH} levels") from None
    _check_depth(doc)
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
