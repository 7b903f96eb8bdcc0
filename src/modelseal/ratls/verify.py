"""Client-side checks of an attested TLS peer, before any request byte is sent.

:class:`PeerPolicy` decides whether the TLS peer is a TEE the client's policy accepts.
The policy is a release-policy document (``tee``, ``debug``, ``tcb_status``,
``measurements``, ``init_data``, ``model_digest``, ``not_after``): the same file that
lets a KBS release a model's key tells a client which TEE may answer its prompts.

Evidence is verified by the TEE kinds' own verifiers from :mod:`modelseal.tee.registry`;
their base template checks that the report data is SHA-256 of the claims buffer, and the
checks here tie that buffer to this TLS connection: the hash of the certificate's
SubjectPublicKeyInfo (the key that just signed the handshake), the validity window, and
for fresh evidence the client's nonce and the connection's RFC 9266 exporter value.
Verified certificates are cached by their digest until their evidence expires, so a new
connection to a known gateway costs a hash and a dictionary look-up.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from modelseal._internal.memo import Memo
from modelseal.crypto.tls_identity import certificate_extension, certificate_spki, spki_hash
from modelseal.errors import (
    AttestationError,
    EvidenceError,
    FormatError,
    PolicyDenied,
    UnsupportedTee,
)
from modelseal.policy import ReleasePolicy, evaluate
from modelseal.protocol.claims import Claims
from modelseal.ratls.wire import (
    OID_TAGGED_EVIDENCE,
    Statement,
    decode_evidence_buffer,
    decode_statement,
    unwrap_evidence,
)
from modelseal.tee import registry
from modelseal.tee.base import Verifier

#: Allowed clock difference between client and gateway (seconds).
CLOCK_SKEW = 60
#: Longest validity window a client accepts for certificate evidence (seconds).
MAX_LIFETIME = 24 * 3600
#: The kinds whose verifier reads a raw quote (Intel TEE quote tag).
QUOTE_KINDS = tuple(
    p.name for p in registry.PLUGINS.values() if registry.QUOTE_TRANSFER_TYPE in p.transfer_types
)


@dataclass(frozen=True)
class Attested:
    """What a client established about its TLS peer."""

    claims: Claims
    statement: Statement
    fresh: bool

    def summary(self) -> dict[str, Any]:
        """JSON-safe description (``modelseal request --show-claims``)."""
        return {
            "tee": self.claims.tee,
            "tcb_status": self.claims.tcb_status,
            "measurements": dict(self.claims.measurements),
            "models": list(self.statement.models),
            "issued_at": self.statement.issued_at,
            "expires": self.statement.expires,
            "fresh": self.fresh,
            "insecure": self.claims.insecure,
        }


class PeerPolicy:
    """Verifies gateway evidence against a client policy (thread-safe)."""

    def __init__(
        self,
        policy: ReleasePolicy,
        *,
        tee_options: Mapping[str, Any] | None = None,
        fresh: bool = True,
        max_age: float | None = None,
        clock: Callable[[], float] = time.time,
        cache_size: int = 64,
    ) -> None:
        self.policy = policy
        self.tee_options = dict(tee_options or {})
        registry.check_options(self.tee_options)
        self.fresh = fresh
        self.max_age = max_age
        self.clock = clock
        self._verifiers: dict[str, Verifier] = {}
        self._cache: Memo[bytes, Attested] = Memo(cache_size)
        self._lock = threading.Lock()

    # --- public checks ----------------------------------------------------------------

    def check_certificate(self, certificate_der: bytes) -> Attested:
        """The certificate's own evidence (cached by certificate digest)."""
        now = self.clock()
        key = hashlib.sha256(certificate_der).digest()
        hit = self._cache.get(key)
        if hit is not None:
            self._check_time(hit.statement, now)
            self._check_policy(hit.claims, hit.statement, now)
            return hit
        try:
            extension = certificate_extension(certificate_der, OID_TAGGED_EVIDENCE)
            spki = certificate_spki(certificate_der)
        except FormatError as exc:
            raise EvidenceError(str(exc)) from exc
        if extension is None:
            raise EvidenceError(
                "the server's certificate carries no attestation evidence "
                f"(extension {OID_TAGGED_EVIDENCE}): not an attested gateway, or a relay"
            )
        attested = self._verify(extension, spki, now, nonce=None, exporter=None)
        self._cache.put(key, attested)
        return attested

    def check_fresh(
        self, buffer: bytes, *, certificate_der: bytes, nonce: bytes, exporter: bytes
    ) -> Attested:
        """Fresh evidence: must bind this nonce and this TLS connection's exporter."""
        try:
            spki = certificate_spki(certificate_der)
        except FormatError as exc:
            raise EvidenceError(str(exc)) from exc
        return self._verify(buffer, spki, self.clock(), nonce=nonce, exporter=exporter)

    # --- the steps --------------------------------------------------------------------

    def _verify(
        self,
        raw: bytes,
        spki: bytes,
        now: float,
        *,
        nonce: bytes | None,
        exporter: bytes | None,
    ) -> Attested:
        buffer = decode_evidence_buffer(raw)
        statement = decode_statement(buffer.claims_buffer)
        try:
            expected_key = spki_hash(spki, statement.spki_hash_alg)
        except FormatError as exc:
            raise EvidenceError(str(exc)) from exc
        if not hmac.compare_digest(expected_key, statement.spki_hash):
            raise EvidenceError(
                "the evidence binds another TLS key (pubkey-hash mismatch): the server "
                "presenting it is not the attested gateway (a relay or a copied certificate)"
            )
        if nonce is not None:
            if statement.nonce is None or not hmac.compare_digest(statement.nonce, nonce):
                raise EvidenceError("the fresh evidence does not carry this client's nonce")
            if statement.tls_exporter is None or exporter is None:
                raise EvidenceError("the fresh evidence is not bound to a TLS connection")
            if not hmac.compare_digest(statement.tls_exporter, exporter):
                raise EvidenceError(
                    "the fresh evidence is bound to another TLS connection (tls-exporter "
                    "mismatch): it was relayed or replayed"
                )
        self._check_time(statement, now)
        claims = self._claims(buffer, now)
        self._check_policy(claims, statement, now)
        return Attested(claims, statement, fresh=nonce is not None)

    def _check_time(self, statement: Statement, now: float) -> None:
        if statement.issued_at > now + CLOCK_SKEW:
            raise EvidenceError("the evidence was issued in the future (clock skew?)")
        if statement.expires - statement.issued_at > MAX_LIFETIME:
            raise EvidenceError(f"the evidence claims a validity beyond {MAX_LIFETIME} s")
        if now >= statement.expires:
            raise EvidenceError(
                f"the evidence expired {int(now - statement.expires)} s ago (at "
                f"{statement.expires}); the gateway did not renew it"
            )
        if self.max_age is not None and now - statement.issued_at > self.max_age:
            raise EvidenceError(
                f"the evidence is {int(now - statement.issued_at)} s old; at most "
                f"{int(self.max_age)} s accepted"
            )

    def _claims(self, buffer: Any, now: float) -> Claims:
        unwrapped = unwrap_evidence(buffer)
        offered = (unwrapped.kind,) if unwrapped.kind is not None else QUOTE_KINDS
        candidates = [k for k in self.policy.tee if k in offered]
        if not candidates:
            raise EvidenceError(
                f"the gateway's evidence is {' or '.join(offered)}; the policy allows only "
                f"{', '.join(self.policy.tee)}"
            )
        report_data = hashlib.sha256(buffer.claims_buffer).digest()
        failure: AttestationError | None = None
        for kind in candidates:
            try:
                verifier = self._verifier(kind)
                return verifier.verify(
                    unwrapped.evidence, expected_report_data=report_data, now=now
                )
            except UnsupportedTee as exc:
                failure = failure or exc
            except EvidenceError as exc:
                failure = exc
        assert failure is not None
        raise failure

    def _verifier(self, kind: str) -> Verifier:
        with self._lock:
            verifier = self._verifiers.get(kind)
        if verifier is None:
            verifier = registry.verifier_for(kind, registry.build_config(kind, self.tee_options))
            with self._lock:
                self._verifiers[kind] = verifier
        return verifier

    def _check_policy(self, claims: Claims, statement: Statement, now: float) -> None:
        decision = evaluate(self.policy, claims, now=now, attested_models=statement.models)
        if not decision.allowed:
            raise PolicyDenied(
                "the gateway does not satisfy the policy: " + "; ".join(decision.reasons),
                reasons=decision.reasons,
            )
