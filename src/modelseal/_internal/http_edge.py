"""The HTTP edge of every modelseal server: problem bodies, capped request bodies, and an
error-to-status table per app.

The KBS serves three APIs (Trustee's RCAR, the admin API, the ITA/CNAP transfer API) and the
registry serves one. They answer errors in different documented shapes, but the mechanics
are the same and live here once:

* :class:`ProblemShape` renders ``{"type": <prefix><kind>, "detail": <text>}`` with the
  headers an app adds to every problem (``Cache-Control: no-store``) or to one status
  (``Retry-After`` on 503, ``WWW-Authenticate`` on 401).
* :class:`ErrorTable` is data: exception class -> :class:`Problem`. The most specific class
  in the exception's MRO wins, so a table never depends on the order of its rows. It also
  names the problems for what the framework answers on its own (unknown path 404, wrong
  method 405, invalid parameter 400, a bug 500) and for a body over the limit.
* :func:`read_body` is the one capped request-body reader: a declared ``Content-Length``
  over the limit is refused before anything is read, a chunked body is cut at the limit.
  Both raise :class:`BodyTooLarge`, a :class:`~modelseal.errors.FormatError`.
* :func:`guard` wraps an endpoint so that anything raised in it becomes its table's
  answer; :func:`guarded_route` is the FastAPI route class that guards every route of a
  router (dependencies included), and :func:`install_error_handlers` does the same for the
  app's framework answers, picking the table by path.
* :class:`RequestObserver` is the one middleware every app runs outermost: it gives each
  request an id (the client's ``X-Request-Id`` if well formed, else a fresh one) that every
  log line of the request carries and the response returns, records the request latency
  histogram per route template and status class, and writes one access line.

Details never carry secrets: modelseal error messages are written without them, and each
table decides per row whether the exception's message is shown or a fixed text is.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelseal._internal import metrics
from modelseal._internal.logs import REQUEST_ID, request_id_from
from modelseal.errors import Error, FormatError

__all__ = [
    "BodyLimit",
    "BodyTooLarge",
    "ErrorTable",
    "PROBLEM_TYPE_PREFIX",
    "Problem",
    "ProblemShape",
    "RequestObserver",
    "guard",
    "guarded_route",
    "install_error_handlers",
    "read_body",
]

#: the ``type`` prefix of every problem modelseal's own APIs answer (admin, registry); the
#: APIs that speak another project's protocol (Trustee's RCAR, ITA) keep its error shape
PROBLEM_TYPE_PREFIX: Final = "https://modelseal.dev/problems/"

#: the framework statuses every table names a problem for
FRAMEWORK_STATUSES: Final = (400, 404, 405, 500)


class BodyTooLarge(FormatError):
    """A request body over the endpoint's limit (declared or streamed)."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One row of an error table: the public status, kind and detail of a failure.

    ``detail=None`` shows the exception's own message (capped by the table), for errors
    whose text is the useful answer ("key id ... not found"); a fixed detail hides it.
    """

    status: int
    kind: str
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class ProblemShape:
    """How one API writes its problems: the ``type`` URI prefix and the extra headers."""

    prefix: str
    #: sent with every problem of this API
    headers: Mapping[str, str] = field(default_factory=dict)
    #: sent with problems of one status only
    status_headers: Mapping[int, Mapping[str, str]] = field(default_factory=dict)

    def response(
        self, status: int, kind: str, detail: str, headers: Mapping[str, str] | None = None
    ) -> Response:
        body = json.dumps({"type": self.prefix + kind, "detail": detail}).encode()
        extra = {**self.headers, **(headers or {}), **self.status_headers.get(status, {})}
        return Response(body, status_code=status, media_type="application/json", headers=extra)


class ErrorTable:
    """Exception class -> :class:`Problem` for one API, plus its framework problems."""

    def __init__(
        self,
        name: str,
        shape: ProblemShape,
        rows: Mapping[type[BaseException], Problem],
        *,
        default: Problem,
        framework: Mapping[int, Problem],
        too_large: Problem,
        logger: logging.Logger,
        max_detail: int | None = None,
        refusal_level: int = logging.INFO,
        name_invalid_parameters: bool = False,
    ) -> None:
        missing = [s for s in FRAMEWORK_STATUSES if s not in framework]
        if missing:
            raise ValueError(f"error table {name!r} lacks framework problems for {missing}")
        self.name = name
        self.shape = shape
        self.rows = dict(rows)
        self.default = default
        self.framework_problems = dict(framework)
        self.too_large_problem = too_large
        self.log = logger
        self.max_detail = max_detail
        self.refusal_level = refusal_level
        #: say which parameter was invalid (never its value); otherwise the fixed 400 text
        self.name_invalid_parameters = name_invalid_parameters

    def lookup(self, exc: BaseException) -> Problem:
        """The row of the most specific class of ``exc`` that the table names."""
        for cls in type(exc).__mro__:
            row = self.rows.get(cls)
            if row is not None:
                return row
        return self.default

    def _detail(self, problem: Problem, exc: BaseException | None) -> str:
        if problem.detail is not None:
            return problem.detail
        text = str(exc) if exc is not None else ""
        text = text or problem.kind.replace("-", " ")
        return text[: self.max_detail] if self.max_detail is not None else text

    def render(
        self,
        problem: Problem,
        exc: BaseException | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        return self.shape.response(
            problem.status, problem.kind, self._detail(problem, exc), headers
        )

    def respond(self, exc: BaseException, *, where: str) -> Response:
        """Log the real reason and answer with the table's problem for ``exc``."""
        problem = self.lookup(exc)
        if problem.status >= 500:
            self.log.error(
                "%s failed: %s: %s",
                where,
                type(exc).__name__,
                exc,
                exc_info=not isinstance(exc, Error),
            )
        else:
            self.log.log(
                self.refusal_level,
                "%s refused (%d): %s: %.300s",
                where,
                problem.status,
                type(exc).__name__,
                exc,
            )
        return self.render(problem, exc)

    def framework(self, status: int, headers: Mapping[str, str] | None = None) -> Response:
        """The answer for a status the router produced (only ``Allow`` is passed on)."""
        if status >= 500:
            problem = self.framework_problems[500]
        else:
            problem = self.framework_problems.get(status, self.framework_problems[400])
        allow = {k: v for k, v in (headers or {}).items() if k.lower() == "allow"}
        return self.render(problem, None, allow)

    def invalid(self, exc: RequestValidationError, *, where: str) -> Response:
        """An invalid path, query or header parameter (FastAPI's default echoes the input)."""
        self.log.log(self.refusal_level, "%s refused (400): invalid request parameters", where)
        problem = self.framework_problems[400]
        if not self.name_invalid_parameters:
            return self.render(problem)
        where_ = ", ".join(".".join(str(p) for p in e.get("loc", ())) for e in exc.errors()[:5])
        return self.shape.response(
            problem.status, problem.kind, f"invalid request parameter: {where_}"[:300]
        )

    def too_large(self) -> Response:
        """The answer for a declared ``Content-Length`` over the app's limit."""
        return self.render(self.too_large_problem)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, at most ``limit`` bytes (chunked bodies included).

    Raises :class:`BodyTooLarge` for a declared or streamed size over the limit and
    :class:`~modelseal.errors.FormatError` for a client that hangs up mid-body.
    """
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise BodyTooLarge(_too_large_text(limit))
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(_too_large_text(limit))
            chunks.append(chunk)
    except ClientDisconnect:
        raise FormatError("request interrupted by the client") from None
    return b"".join(chunks)


def _too_large_text(limit: int) -> str:
    return f"request body too large (larger than {limit} bytes)"


Endpoint = Callable[[Request], Coroutine[Any, Any, Response]]


def guard(table: ErrorTable, where: str, handler: Endpoint) -> Endpoint:
    """``handler`` with everything it raises (dependencies and parameter validation
    included) answered from ``table``; the log names ``where``. The result carries the
    table as ``error_table``, so a test can check that no route escapes its API's table."""

    async def guarded(request: Request) -> Response:
        try:
            return await handler(request)
        except RequestValidationError as exc:
            return table.invalid(exc, where=where)
        except HTTPException as exc:
            return table.framework(exc.status_code, exc.headers)
        except Exception as exc:
            return table.respond(exc, where=where)

    guarded.error_table = table  # type: ignore[attr-defined]
    return guarded


def guarded_route(table: ErrorTable) -> type[APIRoute]:
    """A FastAPI route class whose handler is :func:`guard`-ed with ``table``."""

    class GuardedRoute(APIRoute):
        #: the table this route answers from (tests walk the routes by it)
        error_table: ErrorTable = table

        def get_route_handler(self) -> Endpoint:
            return guard(table, self.name, super().get_route_handler())

    GuardedRoute.__name__ = GuardedRoute.__qualname__ = f"GuardedRoute[{table.name}]"
    return GuardedRoute


def install_error_handlers(app: FastAPI, table_for: Callable[[str], ErrorTable]) -> None:
    """Answer what the framework produces outside any guarded route (unknown path 404,
    wrong method 405, invalid parameter 400, a bug 500) in the shape of ``table_for(path)``
    instead of FastAPI's ``{"detail": ...}``."""

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return table_for(request.url.path).framework(exc.status_code, exc.headers)

    async def on_invalid(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return table_for(request.url.path).invalid(exc, where=request.url.path[:200])

    async def on_bug(request: Request, exc: Exception) -> Response:
        # Starlette's ServerErrorMiddleware re-raises after this, so the server still logs
        # the traceback of what is, by definition, a bug.
        return table_for(request.url.path).framework(500)

    app.add_exception_handler(HTTPException, on_http)
    app.add_exception_handler(RequestValidationError, on_invalid)
    app.add_exception_handler(Exception, on_bug)


class BodyLimit:
    """Pure ASGI guard: refuse a declared ``Content-Length`` over ``limit`` before any
    route runs, in the shape of ``table_for(path)``. Chunked bodies are cut by
    :func:`read_body`."""

    def __init__(self, app: ASGIApp, limit: int, table_for: Callable[[str], ErrorTable]) -> None:
        self.app = app
        self.limit = limit
        self.table_for = table_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for name, value in scope["headers"]:
                if name == b"content-length":
                    if not value.isdigit() or int(value) > self.limit:
                        response = self.table_for(scope["path"]).too_large()
                        await response(scope, receive, send)
                        return
                    break
        await self.app(scope, receive, send)


_access_log = logging.getLogger("modelseal.http")
#: the route label of a request no route matched (a 404 the router answered)
UNMATCHED: Final = "<unmatched>"


class RequestObserver:
    """Pure ASGI middleware: request id, latency histogram and access line of every request.

    Runs outside the routing, so it sees what the router matched only after the app
    returns: the route *template* from ``scope["route"]`` (a client cannot mint metric
    series or log fields by varying paths) and the status from the response start. A
    request the app fails on without answering counts as a 500. The duration runs to the
    last byte sent, so a streamed blob counts whole.
    """

    def __init__(
        self,
        app: ASGIApp,
        server: str,
        prefixes: Sequence[str] = (),
        access_level: int = logging.INFO,
    ) -> None:
        self.app = app
        self.server = server
        #: the level of the access line (a busy server may keep it below its default)
        self.access_level = access_level
        #: the prefixes routers are included under, longest first: a route of an included
        #: router may know its path without the prefix
        self.prefixes = sorted(prefixes, key=len, reverse=True)
        #: endpoint -> template of the router's plain Starlette routes, built on first use
        self._templates: dict[Any, str] | None = None
        self._series = metrics.RequestSeries(server)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                incoming = value
                break
        rid = request_id_from(incoming)
        token = REQUEST_ID.set(rid)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = [(k, v) for k, v in message.get("headers", []) if k != b"x-request-id"]
                headers.append((b"x-request-id", rid.encode("ascii")))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            self._observe(scope, status, time.perf_counter() - started)
            REQUEST_ID.reset(token)

    def _template(self, scope: Scope) -> str:
        """The full template of the route that served the request, or :data:`UNMATCHED`.

        FastAPI's routes put themselves into ``scope["route"]`` (with their path inside
        their router: the prefix the router is included under is found among
        ``prefixes``, the one whose rest the route's pattern matches); a plain Starlette
        route (the RCAR endpoints) leaves only its endpoint, which names its template.
        Either way the template is the app's text, never the client's."""
        route = scope.get("route")
        path = getattr(route, "path", None)
        if isinstance(path, str):
            regex = getattr(route, "path_regex", None)
            requested = str(scope.get("path", ""))
            for prefix in self.prefixes:
                if (
                    requested.startswith(prefix)
                    and regex is not None
                    and regex.match(requested[len(prefix) :])
                ):
                    return prefix + path
            return path
        endpoint, router = scope.get("endpoint"), scope.get("router")
        if endpoint is None or router is None:
            return UNMATCHED
        if self._templates is None:
            self._templates = {
                route.endpoint: route.path
                for route in getattr(router, "routes", ())
                if isinstance(getattr(route, "path", None), str)
                and getattr(route, "endpoint", None) is not None
            }
        return self._templates.get(endpoint, UNMATCHED)

    def _observe(self, scope: Scope, status: int, seconds: float) -> None:
        template = self._template(scope)
        method = metrics.method_label(scope.get("method", ""))
        self._series.observe(template, method, status, seconds)
        if not _access_log.isEnabledFor(self.access_level):
            return
        # escaped: a decoded path may hold line breaks that would forge text log lines
        path = json.dumps(str(scope.get("path", ""))[:200])[1:-1]
        _access_log.log(
            self.access_level,
            "%s %s -> %d in %.1f ms",
            method,
            path,
            status,
            seconds * 1000,
            extra={
                "http_method": method,
                "http_route": template,
                "http_path": path,
                "http_status": status,
                "duration_ms": round(seconds * 1000, 3),
            },
        )
