"""The KBS's error tables: what each API answers for each failure (docs/reference/protocol.md).

The mechanics (problem bodies, the capped body reader, the route class that applies a
table) are in :mod:`modelseal._internal.http_edge`; this module is data.

* :data:`RCAR_ERRORS` - Trustee's ``ErrorInformation`` (``type`` = Trustee's error URI + variant).
  Requesters learn only the class of failure: denial and unknown resource share one
  byte-for-byte identical 403 so the KBS is no existence oracle; the precise reason goes
  to the log (and, for releases, the audit log). The transfer API answers the same way.
* :data:`ITA_ERRORS` - Intel Trust Authority KBS's ``{"error": "..."}`` bodies for its
  registration API under ``/kbs/v1`` (tokens, key-transfer policies, keys); a missing or
  refused bearer token is its plain-text ``Unauthorized``.
* :data:`ADMIN_ERRORS` - the admin API's problem documents under ``/modelseal/``, with
  modelseal's one problem ``type`` prefix, the registry's too (never cached; 401 names the
  Bearer realm). Trustee's ``kbs-client`` admin routes use it too.

:func:`install_error_handlers` makes every answer the framework produces on its own
(unknown route, wrong method, invalid parameter, unhandled exception) use the shape of the
path it was asked for, never FastAPI's ``{"detail": ...}``.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from typing import Final

from fastapi import FastAPI
from starlette.responses import Response

from modelseal._internal import http_edge
from modelseal._internal.http_edge import PROBLEM_TYPE_PREFIX, ErrorTable, Problem, ProblemShape
from modelseal.errors import (
    AttestationError,
    AuthorizationError,
    BackendError,
    ConfigError,
    DecryptionError,
    FormatError,
    NotFound,
    PolicyDenied,
    TokenError,
    UnsupportedTee,
)
from modelseal.keystore.store import KeyConflict
from modelseal.protocol.kbs import ERROR_TYPE_PREFIX

__all__ = [
    "ITA_ERRORS",
    "ADMIN_ERRORS",
    "ADMIN_PATH_PREFIX",
    "RCAR_ERRORS",
    "AdminBadRequest",
    "ItaBadRequest",
    "ItaLoginFailed",
    "ItaNotFound",
    "ItaRefused",
    "ItaUnsupportedMedia",
    "is_ita_path",
    "install_error_handlers",
    "problem",
    "table_for",
]

#: Trustee ErrorInformation variants with their fixed, safe details
MALFORMED: Final = Problem(400, "SerdeError", "malformed request")
UNAUTHENTICATED: Final = Problem(
    401, "TokenVerifierError", "missing, expired or invalid session or token"
)
ATTESTATION_FAILED: Final = Problem(401, "AttestationError", "attestation failed")
TEE_REFUSED: Final = Problem(401, "AttestationError", "TEE kind not accepted by this KBS")
DENIED: Final = Problem(403, "PolicyDeny", "access denied")
UNAVAILABLE: Final = Problem(
    503, "BackendUnavailable", "service temporarily unavailable, retry later"
)
INTERNAL: Final = Problem(500, "InternalError", "internal error")

RCAR_ERRORS: Final = ErrorTable(
    "rcar",
    ProblemShape(ERROR_TYPE_PREFIX, status_headers={503: {"Retry-After": "5"}}),
    {
        # 400 details say what was wrong with the request (never its content); keep them short
        FormatError: Problem(400, "SerdeError"),
        TokenError: UNAUTHENTICATED,
        UnsupportedTee: TEE_REFUSED,
        AttestationError: ATTESTATION_FAILED,
        # one identical answer: the KBS is no existence oracle
        PolicyDenied: DENIED,
        NotFound: DENIED,
        BackendError: UNAVAILABLE,
    },
    default=INTERNAL,
    framework={
        400: MALFORMED,
        404: Problem(404, "InvalidRequestPath", "no such endpoint"),
        405: Problem(405, "InvalidRequestPath", "method not allowed on this endpoint"),
        500: INTERNAL,
    },
    too_large=Problem(400, "SerdeError", "request body too large"),
    logger=logging.getLogger("modelseal.kbs"),
    max_detail=200,
)

ADMIN_PATH_PREFIX: Final = "/modelseal/"


class AdminBadRequest(FormatError):
    """A malformed admin request (HTTP 400 ``bad-request``)."""


_ADMIN_BAD_REQUEST: Final = Problem(400, "bad-request")

ADMIN_ERRORS: Final = ErrorTable(
    "admin",
    ProblemShape(
        PROBLEM_TYPE_PREFIX,
        headers={"Cache-Control": "no-store"},
        status_headers={401: {"WWW-Authenticate": 'Bearer realm="modelseal-kbs-admin"'}},
    ),
    {
        TokenError: Problem(401, "unauthorized", "missing, invalid or expired admin token"),
        AuthorizationError: Problem(403, "forbidden"),
        NotFound: Problem(404, "not-found"),
        KeyConflict: Problem(409, "conflict"),
        ConfigError: _ADMIN_BAD_REQUEST,
        FormatError: _ADMIN_BAD_REQUEST,
        BackendError: Problem(503, "unavailable", "storage temporarily unavailable, retry later"),
        DecryptionError: Problem(500, "integrity"),
    },
    default=Problem(500, "internal", "internal error"),
    framework={
        400: Problem(400, "bad-request", MALFORMED.detail),
        404: Problem(404, "not-found", "no such endpoint"),
        405: Problem(405, "method-not-allowed", "method not allowed on this endpoint"),
        500: Problem(500, "internal", "internal error"),
    },
    too_large=Problem(400, "bad-request", "request body too large"),
    logger=logging.getLogger("modelseal.kbs.admin"),
    refusal_level=logging.WARNING,
    # an operator's script gets told which query parameter was wrong (never its value)
    name_invalid_parameters=True,
)


class ItaBadRequest(FormatError):
    """An ITA request refused with 400; the message is the public ``error`` text."""


class ItaUnsupportedMedia(FormatError):
    """A wrong ``Content-Type`` or ``Accept`` header on an ITA route (415)."""


class ItaNotFound(NotFound):
    """An unknown ITA key or policy id (404); the message is the public text."""


class ItaRefused(AuthorizationError):
    """An ITA operation modelseal does not offer on purpose (403, JSON body)."""


class ItaLoginFailed(TokenError):
    """A wrong user name or password at ``POST /kbs/v1/token`` (401, JSON body)."""


class ItaShape(ProblemShape):
    """ITA's error bodies: Go's ``json.Encoder`` output of ``{"error": text}``, and the
    plain ``Unauthorized`` of its authentication middleware."""

    def response(
        self, status: int, kind: str, detail: str, headers: Mapping[str, str] | None = None
    ) -> Response:
        extra = {**self.headers, **(headers or {})}
        if kind == "unauthorized":
            return Response(
                b"Unauthorized\n",
                status_code=401,
                media_type="text/plain; charset=utf-8",
                headers=extra,
            )
        body = json.dumps({"error": detail}, separators=(",", ":")).encode() + b"\n"
        return Response(body, status_code=status, media_type="application/json", headers=extra)


_ITA_BAD: Final = Problem(400, "bad-request")
_ITA_UNAUTHORIZED: Final = Problem(401, "unauthorized")

ITA_ERRORS: Final = ErrorTable(
    "ita",
    ItaShape("", headers={"Cache-Control": "no-store"}),
    {
        ItaLoginFailed: Problem(401, "login", "401: Invalid username or password"),
        ItaRefused: Problem(403, "forbidden"),
        TokenError: _ITA_UNAUTHORIZED,
        AuthorizationError: _ITA_UNAUTHORIZED,
        ItaUnsupportedMedia: Problem(415, "media"),
        ItaNotFound: Problem(404, "not-found"),
        KeyConflict: Problem(409, "conflict"),
        ConfigError: _ITA_BAD,
        FormatError: _ITA_BAD,
        BackendError: Problem(503, "unavailable", "503: Storage temporarily unavailable"),
        DecryptionError: Problem(500, "integrity", "500: Stored data failed its integrity check"),
    },
    default=Problem(500, "internal", "500: Internal server error"),
    framework={
        400: Problem(400, "bad-request", "Invalid request body"),
        404: Problem(404, "not-found", "404 page not found"),
        405: Problem(405, "method-not-allowed", "405 method not allowed"),
        500: Problem(500, "internal", "500: Internal server error"),
    },
    too_large=Problem(400, "bad-request", "request body too large"),
    logger=logging.getLogger("modelseal.kbs.ita"),
    refusal_level=logging.WARNING,
    max_detail=300,
)

_ITA_ROUTES: Final = re.compile(
    r"/kbs/v1/(?:token|version|key-transfer-policies(?:/[^/]*)?|keys(?:/[^/]*)?)/?"
)


def is_ita_path(path: str) -> bool:
    """True for the paths of ITA's registration API (not its key-transfer route)."""
    return _ITA_ROUTES.fullmatch(path) is not None


def table_for(path: str) -> ErrorTable:
    """The table of the API that serves ``path`` (for answers made outside any route)."""
    if path.startswith(ADMIN_PATH_PREFIX):
        return ADMIN_ERRORS
    return ITA_ERRORS if is_ita_path(path) else RCAR_ERRORS


def problem(status: int, variant: str, detail: str) -> Response:
    """A Trustee ``ErrorInformation`` response that no exception stands for."""
    return RCAR_ERRORS.shape.response(status, variant, detail)


def install_error_handlers(app: FastAPI) -> None:
    """Answer unknown routes (404), wrong methods (405), invalid parameters (400) and bugs
    (500) in the KBS's documented shapes instead of FastAPI's defaults."""
    http_edge.install_error_handlers(app, table_for)
