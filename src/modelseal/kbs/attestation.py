"""AttestationService: picks the verifier for a TEE kind and returns typed claims.

The KBS never trusts the ``tee`` name alone: the verifier of that kind must accept the
evidence and its binding to the runtime data (both checked by the base verifier's
``verify``, whatever the kind). Verifiers are built once per kind (they may hold
collateral caches) and reused across requests. Every verification is counted by kind and
result and timed (``modelseal_attestations_total``,
``modelseal_attestation_verify_duration_seconds``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

from modelseal._internal import metrics
from modelseal._internal.clock import Clock, SystemClock
from modelseal.errors import (
    AttestationError,
    BackendError,
    EvidenceError,
    FormatError,
    UnsupportedTee,
)
from modelseal.protocol.claims import Claims
from modelseal.tee import registry
from modelseal.tee.base import Verifier
from modelseal.tee.plugin import KindConfig

log = logging.getLogger(__name__)


class AttestationService:
    """Verify evidence of any supported kind; insecure kinds only when explicitly allowed."""

    def __init__(self, configs: Mapping[str, KindConfig], *, clock: Clock | None = None) -> None:
        #: each kind's own config (``registry.build_configs``; defaults for kinds left out)
        self.configs = {
            kind: configs.get(kind) or registry.build_config(kind, {}) for kind in registry.KINDS
        }
        self.clock: Clock = clock or SystemClock()
        self._verifiers: dict[str, Verifier] = {}
        self._lock = threading.Lock()
        #: insecure kinds not opted in -> why they are refused (decided once, at start)
        self._refused = {
            kind: f"{kind} TEE refused: the KBS runs without "
            + " or ".join(self.configs[kind].opt_in_flags())
            for kind in registry.kinds(insecure=True)
            if not self.configs[kind].enabled()
        }

    def is_inline(self, tee: str) -> bool:
        """True when ``tee``'s verifier never waits on I/O: run it on the event loop."""
        return not self.verifier(tee).may_block()

    def check_allowed(self, tee: str) -> None:
        """Raise UnsupportedTee for an unknown kind, or an insecure one not opted in.

        Called before a session is created, so a KBS never hands a nonce to a kind whose
        evidence proves nothing unless its operator asked for it.
        """
        if tee not in self.configs:
            registry.plugin(tee)  # raises, naming the known kinds
        refusal = self._refused.get(tee)
        if refusal is not None:
            raise UnsupportedTee(refusal)

    def verifier(self, tee: str) -> Verifier:
        """The (cached) verifier of ``tee``; raises UnsupportedTee if unknown or refused."""
        self.check_allowed(tee)
        verifier = self._verifiers.get(tee)
        if verifier is None:
            with self._lock:
                verifier = self._verifiers.get(tee)
                if verifier is None:
                    verifier = registry.verifier_for(tee, self.configs[tee])
                    self._verifiers[tee] = verifier
        return verifier

    def verify(
        self,
        tee: str,
        evidence: Any,
        *,
        expected_report_data: bytes,
        init_data: bytes | None,
    ) -> Claims:
        """Verify ``evidence``; raises EvidenceError / UnsupportedTee / BackendError.

        The claims are of kind ``tee`` and bound to ``expected_report_data``: the verifier
        of ``tee`` (built by the registry, which checks its kind) refuses anything else.
        """
        started = time.perf_counter()
        result = "error"
        try:
            claims = self.verifier(tee).verify(
                evidence,
                expected_report_data=expected_report_data,
                now=self.clock.now(),
                init_data=init_data,
            )
            result = "ok"
            return claims
        except BaseException as exc:
            result = _result_of(exc)
            raise
        finally:
            # requesters name the kind: only known kinds become label values
            label = tee if tee in self.configs else "_unknown"
            metrics.ATTESTATIONS.labels(label, result).inc()
            metrics.VERIFY_SECONDS.labels(label).observe(time.perf_counter() - started)


def _result_of(exc: BaseException) -> str:
    """The ``result`` label of a failed verification (as the requester's status tells it:
    403/401 rejected, 503 unavailable, 500 error)."""
    if isinstance(exc, UnsupportedTee):
        return "unsupported"
    if isinstance(exc, EvidenceError | AttestationError | FormatError):
        return "rejected"
    if isinstance(exc, BackendError):
        return "unavailable"
    return "error"
