"""Sample verifier: checks only the report-data binding; claims are fixed and insecure.

Refused by :meth:`Verifier.from_config` unless the KBS allows the sample TEE, so a
production KBS can never be talked into trusting unsigned evidence.
"""

from __future__ import annotations

import hashlib
import hmac
import tomllib
from collections.abc import Mapping
from typing import Any, ClassVar

from modelseal._internal.encoding import b64_decode
from modelseal.errors import EvidenceError, FormatError, UnsupportedTee
from modelseal.protocol.claims import Claims
from modelseal.tee.base import VerifierConfig, pad_report_data

REPORT_DATA_SIZE = 64
MAX_EVIDENCE_FIELD = 256
_INIT_DATA_HASHES = {"sha256": hashlib.sha256, "sha384": hashlib.sha384, "sha512": hashlib.sha512}


def _init_data_claims(init_data: bytes) -> tuple[str, dict[str, str]]:
    """Digest (declared algorithm over the raw text) and the ``[data]`` table of init-data.

    The sample TEE has no launch-time field to bind the digest to; it is reported so policies
    and audits see what the guest claimed, and the token is marked insecure anyway.
    """
    try:
        doc = tomllib.loads(init_data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError, ValueError) as exc:
        # tomllib recurses per nesting level; integers over 4,300 digits raise ValueError
        raise EvidenceError("init-data is not a valid TOML document") from exc
    algorithm = doc.get("algorithm")
    fn = _INIT_DATA_HASHES.get(algorithm) if isinstance(algorithm, str) else None
    if fn is None:
        raise EvidenceError("init-data algorithm must be sha256, sha384 or sha512")
    data = doc.get("data", {})
    if not isinstance(data, Mapping) or not all(isinstance(v, str) for v in data.values()):
        raise EvidenceError("init-data [data] must map names to strings")
    return fn(init_data).hexdigest(), {str(k): v for k, v in data.items()}


class Verifier:
    """Accepts ``{"svn": str, "report_data": std-base64}`` whose report data matches."""

    tee: ClassVar[str] = "sample"

    @classmethod
    def from_config(cls, config: VerifierConfig) -> Verifier:
        if not config.allow_sample:
            raise UnsupportedTee(
                "the sample TEE is refused: the KBS was not started with --insecure-allow-sample"
            )
        return cls()

    def verify(
        self,
        evidence: Any,
        *,
        expected_report_data: bytes,
        now: float,
        init_data: bytes | None = None,
    ) -> Claims:
        if not isinstance(evidence, Mapping):
            raise EvidenceError("sample evidence must be a JSON object")
        svn = evidence.get("svn")
        encoded = evidence.get("report_data")
        if not isinstance(svn, str) or not isinstance(encoded, str):
            raise EvidenceError("sample evidence needs string members svn and report_data")
        if len(svn) > MAX_EVIDENCE_FIELD or len(encoded) > MAX_EVIDENCE_FIELD:
            raise EvidenceError("sample evidence member too long")
        try:
            reported = b64_decode(encoded, what="sample report_data")
        except FormatError as exc:
            raise EvidenceError("sample report_data is not standard base64") from exc
        if len(reported) > REPORT_DATA_SIZE or len(expected_report_data) > REPORT_DATA_SIZE:
            raise EvidenceError("sample report_data is longer than 64 bytes")
        if not hmac.compare_digest(
            pad_report_data(reported, REPORT_DATA_SIZE),
            pad_report_data(expected_report_data, REPORT_DATA_SIZE),
        ):
            raise EvidenceError("sample report_data does not match the runtime-data binding")
        digest, data = _init_data_claims(init_data) if init_data is not None else (None, {})
        return Claims(
            tee="sample",
            debug=False,
            report_data=pad_report_data(reported, REPORT_DATA_SIZE),
            tcb_status="UpToDate",
            init_data_digest=digest,
            init_data=data,
            insecure=True,
            extra={"svn": "1"},
        )
