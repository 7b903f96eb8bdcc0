"""TPM 2.0 verifier: trusted AK, quote signature, nonce binding, PCR digest, event log.

Checks, in order: evidence shape -> AK trusted (configured key, or AK certificate chain to
a configured CA) -> optional TPM2B_PUBLIC of the AK matches and is a restricted signing
key -> signature over TPMS_ATTEST -> PCR digest -> event-log replay; then the base
verifier: extraData == the binding digest zero-padded to the nonce length (32..64 bytes;
our attester uses 64) and init-data (Trustee: PCR8 == SHA-256(32 zero bytes || digest)).
Claims: ``pcr0``..``pcr23`` of the quoted bank plus kernel/cmdline/initrd digests found in
a replayed event log.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, ClassVar

from modelseal.crypto.tpm_sig import normalize_public_key
from modelseal.errors import EvidenceError, UnsupportedTee
from modelseal.protocol.claims import Claims
from modelseal.tee import base
from modelseal.tee.base import Authenticated, InitDataField
from modelseal.tee.plugin import KindConfig
from modelseal.tee.tpm import TRUSTED_AKS, TpmConfig
from modelseal.tee.tpm.evidence import parse_evidence
from modelseal.tee.tpm.quote import VerifiedQuote, verify_quote
from modelseal.tee.tpm.structures import parse_public, parse_signature
from modelseal.tee.tpm.trust import TrustStore, spki_of_public

MIN_NONCE = 32
MAX_NONCE = 64
INIT_DATA_PCR = 8


class Verifier(base.Verifier):
    """Verifies TPM quotes by AKs from a :class:`TrustStore`."""

    def may_block(self) -> bool:
        return False  # local material only: no collateral is ever downloaded

    tee: ClassVar[str] = "tpm"
    #: Our attester uses 64 bytes; other attesters may use as few as 32.
    report_data_sizes: ClassVar[tuple[int, int]] = (MIN_NONCE, MAX_NONCE)
    report_data_field: ClassVar[str] = "TPM quote nonce (extraData)"

    def __init__(self, trust: TrustStore) -> None:
        self._trust = trust

    @classmethod
    def from_config(cls, config: KindConfig) -> Verifier:
        if not isinstance(config, TpmConfig) or not config.trusted_aks:
            raise UnsupportedTee(f"TPM evidence is refused: no {TRUSTED_AKS.flag} configured")
        return cls(TrustStore.load(config.trusted_aks))

    def _verify_evidence(self, evidence: Any, *, now: float) -> Authenticated:
        ev = parse_evidence(evidence)
        try:
            ak = normalize_public_key(ev.ak_public)
        except ValueError as exc:
            raise EvidenceError("ak_public is not an RSA or EC SubjectPublicKeyInfo") from exc
        if ev.ak_tpm_public is not None:
            public = parse_public(ev.ak_tpm_public)
            if spki_of_public(public) != ak:
                raise EvidenceError("ak_tpm_public and ak_public are different keys")
            if not public.is_attestation_key:
                raise EvidenceError("the quoting key is not a restricted, TPM-resident signing key")
        trust = self._trust.check(ak, ev.ak_certs, now)
        verified = verify_quote(
            ak, ev.message, parse_signature(ev.signature), ev.pcrs, event_log=ev.event_log
        )
        pcr8 = verified.pcrs.get(INIT_DATA_PCR)
        launch = Pcr8Field("PCR8", pcr8) if verified.bank == "sha256" and pcr8 is not None else None
        return Authenticated(
            _claims(verified, trust, ak),
            init_data_field=launch,
            init_data_refusal="init-data needs a SHA-256 quote covering PCR8",
        )


@dataclass(frozen=True)
class Pcr8Field(InitDataField):
    """Trustee's TPM binding: the init-data digest (32 B) extended once into SHA-256 PCR8."""

    def expected(self, digest: bytes) -> bytes:
        return hashlib.sha256(bytes(32) + digest[:32].ljust(32, b"\x00")).digest()


def _claims(quote: VerifiedQuote, trust: str, ak: bytes) -> Claims:
    measurements = {f"pcr{i}": v.hex() for i, v in sorted(quote.pcrs.items())}
    extra: dict[str, Any] = {
        "bank": quote.bank,
        "ak_sha256": hashlib.sha256(ak).hexdigest(),
        "ak_trust": trust,
        "qualified_signer": quote.attest.qualified_signer.hex(),
        "clock": quote.attest.clock,
        "reset_count": quote.attest.reset_count,
        "restart_count": quote.attest.restart_count,
        "firmware_version": f"{quote.attest.firmware_version:016x}",
        "signature": f"{quote.signature.scheme}-{quote.signature.hash}",
    }
    if quote.components is not None:
        measurements.update(quote.components.measurements())
        extra["event_log"] = quote.components.to_json()
    return Claims(
        tee="tpm",
        debug=False,
        report_data=quote.attest.extra_data,
        tcb_status=None,
        measurements=measurements,
        extra=extra,
    )
