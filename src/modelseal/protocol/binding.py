"""Runtime-data binding of the KBS protocol (Trustee ``kbs_protocol`` 0.4:
``kbs/docs/kbs_attestation_protocol.md`` in ``confidential-containers/trustee``).

The TEE proves that its evidence belongs to this session and to its ephemeral key by putting
``H(JCS({"additional-evidence": AE, "nonce": N, "tee-pubkey": K}))`` into the hardware
report-data field (zero-padded). Client and KBS both compute the digest here, from RFC 8785
canonical JSON, so they can never disagree on the bytes hashed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, Final

from modelseal._internal.canonical import canonical_json
from modelseal.errors import FormatError

#: Trustee's default hash (``extra-params`` without ``selected-hash-algorithm``).
DEFAULT_HASH: Final = "sha384"
_HASHES: Final = {"sha256": hashlib.sha256, "sha384": hashlib.sha384, "sha512": hashlib.sha512}


def _digest(value: Any, hash_alg: str) -> bytes:
    fn = _HASHES.get(hash_alg)
    if fn is None:
        raise FormatError(f"unsupported runtime-data hash algorithm {hash_alg!r}")
    return fn(canonical_json(value)).digest()


def runtime_data_digest(
    nonce: str,
    tee_pubkey: Mapping[str, Any],
    additional_evidence: str = "",
    *,
    hash_alg: str = DEFAULT_HASH,
) -> bytes:
    """Digest the primary attester puts into report_data (unpadded, 48 bytes for SHA-384)."""
    return _digest(
        {
            "additional-evidence": additional_evidence,
            "nonce": nonce,
            "tee-pubkey": dict(tee_pubkey),
        },
        hash_alg,
    )


def device_digest(
    nonce: str, tee_pubkey: Mapping[str, Any], *, hash_alg: str = DEFAULT_HASH
) -> bytes:
    """Digest given to *additional* (device) attesters: no ``additional-evidence`` member."""
    return _digest({"nonce": nonce, "tee-pubkey": dict(tee_pubkey)}, hash_alg)
