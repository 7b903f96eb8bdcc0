"""Map modelseal errors to KBS HTTP responses (DESIGN §5): status + ErrorInformation body.

Requesters learn only the class of failure. Denial and unknown resource share one byte-for-
byte identical 403 so the KBS is no existence oracle; the precise reason goes to the log
(and, for releases, the audit log).
"""

from __future__ import annotations

import json
import logging

from starlette.responses import Response

from modelseal.errors import (
    AttestationError,
    BackendError,
    Error,
    FormatError,
    NotFound,
    PolicyDenied,
    TokenError,
    UnsupportedTee,
)
from modelseal.protocol.kbs import ERROR_TYPE_PREFIX

log = logging.getLogger("modelseal.kbs")

#: (status, Trustee ErrorInformation variant, safe detail)
MALFORMED = (400, "SerdeError", "malformed request")
UNAUTHENTICATED = (401, "TokenVerifierError", "missing, expired or invalid session or token")
ATTESTATION_FAILED = (401, "AttestationError", "attestation failed")
TEE_REFUSED = (401, "AttestationError", "TEE kind not accepted by this KBS")
DENIED = (403, "PolicyDeny", "access denied")
UNAVAILABLE = (503, "BackendUnavailable", "service temporarily unavailable, retry later")
INTERNAL = (500, "InternalError", "internal error")
TOO_LARGE = (400, "SerdeError", "request body too large")
#: 400 details echo what was wrong with the request; keep them short.
MAX_DETAIL = 200


def problem(status: int, variant: str, detail: str) -> Response:
    body = json.dumps({"type": ERROR_TYPE_PREFIX + variant, "detail": detail}).encode()
    headers = {"Retry-After": "5"} if status == 503 else None
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def classify(exc: BaseException) -> tuple[int, str, str]:
    """The public (status, variant, detail) of an exception; never reveals the reason."""
    if isinstance(exc, FormatError):
        return (400, "SerdeError", (str(exc) or MALFORMED[2])[:MAX_DETAIL])
    if isinstance(exc, TokenError):
        return UNAUTHENTICATED
    if isinstance(exc, UnsupportedTee):
        return TEE_REFUSED
    if isinstance(exc, AttestationError):
        return ATTESTATION_FAILED
    if isinstance(exc, PolicyDenied | NotFound):
        return DENIED
    if isinstance(exc, BackendError):
        return UNAVAILABLE
    return INTERNAL


def error_response(exc: BaseException, *, where: str) -> Response:
    """Log the real reason (no secrets are ever in modelseal messages) and answer safely."""
    status, variant, detail = classify(exc)
    if status >= 500:
        log.error(
            "%s failed: %s: %s", where, type(exc).__name__, exc, exc_info=not isinstance(exc, Error)
        )
    else:
        # Policy reasons are recorded in the audit log only (issue 3, DESIGN section 6).
        log.info("%s refused (%d): %s: %.300s", where, status, type(exc).__name__, exc)
    return problem(status, variant, detail)
