"""AttestationService: picks the verifier for a TEE kind and returns typed claims.

The KBS never trusts the ``tee`` name alone: the verifier of that kind must accept the
evidence and its binding to the runtime data (both checked by the base verifier's
``verify``, whatever the kind). Verifiers are built once per kind (they may hold
collateral caches) and reused across requests.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from modelseal._internal.clock import Clock, SystemClock
from modelseal.errors import UnsupportedTee
from modelseal.protocol.claims import Claims
from modelseal.tee.base import Verifier, VerifierConfig
from modelseal.tee.registry import verifier_for

log = logging.getLogger(__name__)


class AttestationService:
    """Verify evidence of any supported kind; ``sample`` only when explicitly allowed."""

    def __init__(self, config: VerifierConfig, *, clock: Clock | None = None) -> None:
        self.config = config
        self.clock: Clock = clock or SystemClock()
        self._verifiers: dict[str, Verifier] = {}
        self._lock = threading.Lock()

    def is_inline(self, tee: str) -> bool:
        """True when ``tee``'s verifier never waits on I/O: run it on the event loop."""
        return not self.verifier(tee).may_block()

    @property
    def allow_sample(self) -> bool:
        return self.config.allow_sample

    def verifier(self, tee: str) -> Verifier:
        """The (cached) verifier of ``tee``; raises UnsupportedTee if unknown or refused."""
        if tee == "sample" and not self.config.allow_sample:
            raise UnsupportedTee("sample TEE refused: KBS runs without --insecure-allow-sample")
        verifier = self._verifiers.get(tee)
        if verifier is None:
            with self._lock:
                verifier = self._verifiers.get(tee)
                if verifier is None:
                    verifier = verifier_for(tee, self.config)
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
        return self.verifier(tee).verify(
            evidence,
            expected_report_data=expected_report_data,
            now=self.clock.now(),
            init_data=init_data,
        )
