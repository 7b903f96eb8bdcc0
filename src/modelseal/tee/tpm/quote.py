"""Verify one TPM2 quote: AK signature over TPMS_ATTEST, nonce, PCR digest, event log.

This is the kind-independent core used by :mod:`modelseal.tee.tpm.verifier` (and usable on
vTPM quotes from other platforms). The AK public key is given as SPKI DER; deciding
whether that key is *trusted* is the caller's job (:mod:`modelseal.tee.tpm.trust`).
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from dataclasses import dataclass, field

from modelseal.crypto.tpm_sig import verify_quote_signature
from modelseal.errors import EvidenceError
from modelseal.tee.eventlog import MeasuredComponents, extract_components, parse_event_log
from modelseal.tee.eventlog.replay import replay_tcg2
from modelseal.tee.tpm.structures import (
    HASH_ALGS,
    HASH_IDS,
    Attest,
    Signature,
    parse_attest,
    pcr_digest,
)


@dataclass(frozen=True)
class VerifiedQuote:
    """A quote whose signature, nonce and PCR digest were checked."""

    attest: Attest
    signature: Signature
    bank: str
    pcrs: dict[int, bytes]
    replayed: dict[int, bytes] = field(default_factory=dict)
    components: MeasuredComponents | None = None


def verify_quote(
    ak_spki: bytes,
    message: bytes,
    signature: Signature,
    pcr_values: Sequence[bytes],
    *,
    nonce_ok: bytes | None = None,
    event_log: bytes | None = None,
) -> VerifiedQuote:
    """Check a quote; ``nonce_ok`` (if given) must equal extraData exactly.

    ``pcr_values`` are the values of the selected PCRs in selection order (one bank).
    With ``event_log`` (raw TCG2 log) every PCR the log extends must be quoted and equal
    its replay, so components extracted from the log are attested.
    """
    if not verify_quote_signature(
        ak_spki,
        signature.scheme,
        signature.hash,
        message,
        value=signature.value,
        r=signature.r,
        s=signature.s,
    ):
        raise EvidenceError("TPM quote signature is invalid under the attestation key")
    attest = parse_attest(message)
    if nonce_ok is not None and not hmac.compare_digest(attest.extra_data, nonce_ok):
        raise EvidenceError("TPM quote nonce (extraData) does not match the expected value")
    if len(attest.pcr_select) != 1:
        raise EvidenceError("TPM quote must select exactly one PCR bank")
    selection = attest.pcr_select[0]
    size = HASH_ALGS[HASH_IDS[selection.bank]][1]
    if len(pcr_values) != len(selection.indices):
        raise EvidenceError(
            f"evidence has {len(pcr_values)} PCR values, the quote selects {len(selection.indices)}"
        )
    if any(len(v) != size for v in pcr_values):
        raise EvidenceError(f"PCR values must be {size}-byte {selection.bank} digests")
    digest = pcr_digest(list(pcr_values), signature.hash)
    if not hmac.compare_digest(digest, attest.pcr_digest):
        raise EvidenceError("PCR values do not match the quoted PCR digest")
    pcrs = dict(zip(selection.indices, pcr_values, strict=True))
    replayed: dict[int, bytes] = {}
    components = None
    if event_log is not None:
        log = parse_event_log(event_log)
        alg = HASH_IDS[selection.bank]
        replayed = replay_tcg2(log, alg)
        for index, value in sorted(replayed.items()):
            if index not in pcrs:
                raise EvidenceError(f"event log extends PCR{index}, which the quote does not cover")
            if not hmac.compare_digest(pcrs[index], value):
                raise EvidenceError(
                    f"event log does not replay to the quoted PCR{index}: replayed "
                    f"{value.hex()}, quoted {pcrs[index].hex()}"
                )
        components = extract_components(log, alg)
    return VerifiedQuote(attest, signature, selection.bank, pcrs, replayed, components)
