"""Map modelseal errors to KBS HTTP responses (DESIGN §5): status + ErrorInformation body.

Requesters learn only the class of failure. Denial and unknown resource share one byte-for-
byte identical 403 so the KBS is no existence oracle; the precise reason goes to the log
(and, for releases, the audit log).

The KBS serves two error shapes: Trustee's ``ErrorInformation`` everywhere, and the admin
API's problem documents under ``/modelseal/``. :func:`install_error_handlers` makes every
answer the framework produces on its own (unknown route, wrong method, invalid parameter,
unhandled exception) use the shape of the path it was asked for, never FastAPI's
``{"detail": ...}``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Final

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
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
NO_ROUTE = (404, "InvalidRequestPath", "no such endpoint")
NO_METHOD = (405, "InvalidRequestPath", "method not allowed on this endpoint")
#: 400 details echo what was wrong with the request; keep them short.
MAX_DETAIL = 200


#: Problem ``type`` prefix of the admin API (``/modelseal/v1``).
ADMIN_PROBLEM_PREFIX: Final = "https://modelseal.dev/problems/admin/"
ADMIN_PATH_PREFIX: Final = "/modelseal/"


def problem(
    status: int, variant: str, detail: str, headers: dict[str, str] | None = None
) -> Response:
    """A Trustee ``ErrorInformation`` response."""
    body = json.dumps({"type": ERROR_TYPE_PREFIX + variant, "detail": detail}).encode()
    extra = dict(headers or {})
    if status == 503:
        extra["Retry-After"] = "5"
    return Response(body, status_code=status, media_type="application/json", headers=extra)


def admin_problem(
    status: int, kind: str, detail: str, headers: dict[str, str] | None = None
) -> Response:
    """An admin API problem document (never cached; 401 names the Bearer realm)."""
    body = json.dumps({"type": ADMIN_PROBLEM_PREFIX + kind, "detail": detail}).encode()
    extra = {"Cache-Control": "no-store", **(headers or {})}
    if status == 401:
        extra["WWW-Authenticate"] = 'Bearer realm="modelseal-kbs-admin"'
    return Response(body, status_code=status, media_type="application/json", headers=extra)


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


#: Admin problem kinds of the statuses the framework raises on its own.
_ADMIN_KINDS: Final = {404: "not-found", 405: "method-not-allowed"}


def _framework_error(path: str, status: int, headers: Mapping[str, str] | None) -> Response:
    """The answer for a status the router produced (no handler of ours ran)."""
    allow = {k: v for k, v in (headers or {}).items() if k.lower() == "allow"}
    if status >= 500:
        status, variant, detail = INTERNAL
    elif status in (404, 405):
        status, variant, detail = NO_ROUTE if status == 404 else NO_METHOD
    else:
        variant, detail = MALFORMED[1], MALFORMED[2]
    if path.startswith(ADMIN_PATH_PREFIX):
        kind = _ADMIN_KINDS.get(status, "internal" if status >= 500 else "bad-request")
        return admin_problem(status, kind, detail, allow)
    return problem(status, variant, detail, allow)


def body_too_large(path: str) -> Response:
    """The 400 for a declared ``Content-Length`` above the limit, in the path's shape."""
    if path.startswith(ADMIN_PATH_PREFIX):
        return admin_problem(400, "bad-request", TOO_LARGE[2])
    return problem(*TOO_LARGE)


async def _on_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return _framework_error(request.url.path, exc.status_code, exc.headers)


async def _on_validation_error(request: Request, exc: Exception) -> Response:
    # FastAPI's default echoes the offending input; name nothing
    log.info("%s refused (400): invalid request parameters", request.url.path[:200])
    return _framework_error(request.url.path, 400, None)


async def _on_unhandled(request: Request, exc: Exception) -> Response:
    # Starlette's ServerErrorMiddleware re-raises after this, so the server still logs
    # the traceback of what is, by definition, a bug.
    return _framework_error(request.url.path, 500, None)


def install_error_handlers(app: FastAPI) -> None:
    """Answer unknown routes (404), wrong methods (405), invalid parameters (400) and bugs
    (500) in the KBS's documented shapes instead of FastAPI's defaults."""
    app.add_exception_handler(HTTPException, _on_http_exception)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(Exception, _on_unhandled)
