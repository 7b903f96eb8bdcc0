"""The gateway's attested identity: an in-memory key, evidence binding it, a certificate.

At start the gateway generates its TLS key (:class:`~modelseal.crypto.tls_identity.TlsKey`,
never serialized) and asks the TEE's attester for evidence whose report data is the
SHA-256 of a claims buffer naming the key (hash of its SubjectPublicKeyInfo), the model
digests from the loader's receipts and a validity window. That evidence goes into the
certificate (extension ``2.23.133.5.4.9``). Before half the window has passed the
gateway makes new evidence and a new certificate for the same key, so a client never
sees evidence older than the window. On request it makes *fresh* evidence that also
binds a client nonce and the TLS connection's exporter value.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from OpenSSL import SSL

from modelseal._internal import metrics
from modelseal.crypto.tls_identity import TlsKey
from modelseal.errors import ConfigError
from modelseal.ratls.wire import (
    OID_TAGGED_EVIDENCE,
    Statement,
    models_claim,
    wrap_evidence,
)
from modelseal.tee.base import Attester

log = logging.getLogger(__name__)

#: pubkey-hash algorithm: IANA Named Information id 1 (sha-256), mandatory for verifiers
SPKI_HASH_ALG = 1
#: The receipt the loader writes (``DEST/.modelseal/receipt.json``).
RECEIPT_FORMAT = "modelseal-receipt/1"
MAX_RECEIPT_BYTES = 1024 * 1024
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
#: Certificates are valid from a minute before issue (clients' clocks drift).
CLOCK_SKEW = 60


def models_from_receipts(paths: Iterable[Path]) -> tuple[str, ...]:
    """The model digests recorded by the loader's receipts (``ConfigError`` if unreadable
    or without a digest: the gateway must not attest a model it cannot name)."""
    digests = []
    for path in paths:
        try:
            with path.open("rb") as f:
                raw = f.read(MAX_RECEIPT_BYTES + 1)
        except OSError as exc:
            raise ConfigError(f"cannot read the receipt {path}: {exc.strerror}") from exc
        if len(raw) > MAX_RECEIPT_BYTES:
            raise ConfigError(f"{path} is larger than {MAX_RECEIPT_BYTES} bytes")
        try:
            receipt = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise ConfigError(f"{path} is not a JSON receipt") from exc
        if not isinstance(receipt, dict) or receipt.get("format_version") != RECEIPT_FORMAT:
            raise ConfigError(f"{path} is not a {RECEIPT_FORMAT} receipt")
        digest = receipt.get("model_digest")
        if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
            raise ConfigError(f"{path} records no sha256 model digest")
        digests.append(digest)
    return models_claim(digests)


@dataclass(frozen=True)
class Issued:
    """One certificate and the TLS context serving it."""

    context: SSL.Context
    certificate: bytes
    issued_at: int
    expires: int


class AttestedIdentity:
    """Key, current certificate and evidence maker of one gateway process."""

    def __init__(
        self,
        kind: str,
        attester: Attester,
        *,
        models: Iterable[str] = (),
        lifetime: int = 3600,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if lifetime < 60:
            raise ConfigError("the evidence lifetime must be at least 60 seconds")
        self.kind = kind
        self.attester = attester
        self.models = models_claim(list(models))
        self.lifetime = lifetime
        self.clock = clock
        self.key = TlsKey()
        self.spki_hash = hashlib.sha256(self.key.spki_der).digest()
        self._lock = threading.Lock()
        # every renewal passes through refresh(), the refresher's and a late accept's alike
        self._renewals = {
            result: metrics.GATEWAY_RENEWALS.labels(result)
            for result in metrics.GATEWAY_RENEWAL_RESULTS
        }
        self._issued = self._issue()

    def statement(
        self, *, nonce: bytes | None = None, tls_exporter: bytes | None = None
    ) -> Statement:
        """A claims statement about this key and these models, valid for the lifetime."""
        now = int(self.clock())
        return Statement(
            spki_hash_alg=SPKI_HASH_ALG,
            spki_hash=self.spki_hash,
            issued_at=now,
            expires=now + self.lifetime,
            models=self.models,
            nonce=nonce,
            tls_exporter=tls_exporter,
        )

    def evidence_buffer(self, statement: Statement) -> bytes:
        """The TEE's evidence over ``statement``, as the tagged CBOR evidence buffer."""
        claims = statement.encode()
        evidence = self.attester.evidence(hashlib.sha256(claims).digest())
        return wrap_evidence(self.kind, evidence, claims).encode()

    def _issue(self) -> Issued:
        statement = self.statement()
        extension = self.evidence_buffer(statement)
        cert = self.key.certificate(
            extensions=[(OID_TAGGED_EVIDENCE, extension)],
            not_before=statement.issued_at - CLOCK_SKEW,
            not_after=statement.expires,
        )
        return Issued(self.key.server_context(cert), cert, statement.issued_at, statement.expires)

    @property
    def current(self) -> Issued:
        """The certificate to serve now (renewed here if the refresher fell behind)."""
        issued = self._issued
        if self.clock() >= issued.issued_at + self.lifetime // 2:
            return self.refresh(unless_newer_than=issued)
        return issued

    @property
    def issued(self) -> Issued:
        """The certificate served now, never renewed by asking (what metrics report)."""
        return self._issued

    def refresh(self, *, unless_newer_than: Issued | None = None) -> Issued:
        """New evidence and certificate for the same key (once, when several threads
        find the current one aged at the same time). Counted in
        ``modelseal_gateway_certificate_renewals_total`` either way it ends."""
        with self._lock:
            if unless_newer_than is not None and self._issued is not unless_newer_than:
                return self._issued
            try:
                issued = self._issue()
            except Exception:
                self._renewals["failed"].inc()
                raise
            self._issued = issued
        self._renewals["ok"].inc()
        log.info("attested certificate renewed; valid until %d", issued.expires)
        return issued

    def next_refresh(self) -> float:
        """When (Unix seconds) the current certificate reaches half its lifetime."""
        return self._issued.issued_at + self.lifetime / 2
