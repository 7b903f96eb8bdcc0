"""AttestationService: picks the verifier for a TEE kind and returns typed claims.

The KBS never trusts the ``tee`` name alone: the verifier of that kind must accept the
evidence and its binding to the runtime data (both checked by the base verifier's
``verify``, whatever the kind). Verifiers are built once per kind (they may hold
collateral caches) and reused across requests. Every verification is counted by kind and
result and timed (``modelseal_attestations_total``,
``modelseal_attestation_verify_duration_seconds``).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from modelseal._internal import metrics
from modelseal._internal.bounded import load_json
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

#: Bounds of Trustee's ``additional_evidence`` string (JSON of kind -> device evidence).
MAX_ADDITIONAL_EVIDENCE = 4 * 1024 * 1024
MAX_DEVICES = 16


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
            # a registered name that is no wire kind: an evidence relay, which the client
            # must replace by the kind it relays
            raise UnsupportedTee(
                f"{tee!r} is not a TEE kind a KBS verifies; known: {', '.join(registry.KINDS)}"
            )
        refusal = self._refused.get(tee)
        if refusal is not None:
            raise UnsupportedTee(refusal)

    def check_primary(self, tee: str) -> None:
        """:meth:`check_allowed`, and ``tee`` must not be a device kind: a GPU alone keeps
        no key from its host, so its evidence only ever travels next to a CPU TEE's."""
        self.check_allowed(tee)
        if registry.plugin(tee).device:
            raise UnsupportedTee(
                f"{tee} is a device TEE: attest the CPU TEE and send the {tee} evidence "
                "as its additional evidence"
            )

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
        return self._observed(
            tee,
            lambda: self.verifier(tee).verify(
                evidence,
                expected_report_data=expected_report_data,
                now=self.clock.now(),
                init_data=init_data,
            ),
        )

    def _observed(self, tee: str, verify: Callable[[], Claims]) -> Claims:
        """``verify()``, counted by kind and result and timed."""
        started = time.perf_counter()
        result = "error"
        try:
            claims = verify()
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

    def device_kinds(self, additional_evidence: str) -> list[tuple[str, Any]]:
        """``(kind, one device's evidence)`` pairs of Trustee's additional evidence: the
        JSON text of an object mapping device kinds to their evidence. Only device kinds
        (GPUs) may appear; each kind's verifier splits its document per device."""
        try:
            doc = load_json(
                additional_evidence,
                what="additional evidence",
                max_bytes=MAX_ADDITIONAL_EVIDENCE,
            )
        except FormatError as exc:
            raise EvidenceError(str(exc)) from None
        if not isinstance(doc, dict) or not doc:
            raise EvidenceError("additional evidence must be a JSON object of device evidence")
        pairs: list[tuple[str, Any]] = []
        for kind, evidence in doc.items():
            if kind not in self.configs or not registry.plugin(kind).device:
                raise EvidenceError(
                    f"additional evidence names {kind[:32]!r}, which is not a device TEE kind "
                    f"({', '.join(registry.kinds(device=True))})"
                )
            pairs.extend((kind, part) for part in self.verifier(kind).split_devices(evidence))
            if len(pairs) > MAX_DEVICES:
                raise EvidenceError(f"additional evidence lists more than {MAX_DEVICES} devices")
        return pairs

    def verify_devices(
        self, additional_evidence: str, *, expected_report_data: bytes
    ) -> tuple[Claims, ...]:
        """Verify every device of the additional evidence against the device binding
        (the session's nonce and TEE key without the additional evidence itself, as
        guest-components computes it); any failure refuses the whole attestation."""
        return tuple(
            self._observed(
                kind,
                functools.partial(
                    self.verifier(kind).verify,
                    evidence,
                    expected_report_data=expected_report_data,
                    now=self.clock.now(),
                ),
            )
            for kind, evidence in self.device_kinds(additional_evidence)
        )


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
