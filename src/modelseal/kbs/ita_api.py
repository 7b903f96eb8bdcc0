"""Intel Trust Authority KBS registration API, mounted at ``/kbs/v1`` next to the transfer
route (normative: docs/reference/ita-kbs-api.md).

An ITA user's scripts register keys as ``POST /token`` (user name and password -> bearer
JWT), ``POST /key-transfer-policies``, ``POST /keys`` with ``transfer_policy_id``; the TD
then fetches the key at ``/keys/<id>/transfer``. The routes, methods, JSON members, status
codes, header checks (``Content-Type``/``Accept``, 415 when wrong) and error bodies
(``{"error": "..."}``; a refused bearer token is a plain ``Unauthorized``) are ITA's. The
bearer token is a modelseal admin token: the one ``/token`` returns, or one from
``modelseal kbs token``; its role decides what it may do (reading: any role; creating
policies and keys, moving a key to another policy: publisher; deleting: admin).
"""

# No ``from __future__ import annotations``: FastAPI reads the routes' ``Annotated``
# dependencies at definition time, and they name per-app objects local to a function.

import logging
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import anyio
import anyio.to_thread
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from modelseal import __version__
from modelseal._internal.bounded import check_json
from modelseal._internal.http_edge import guarded_route, read_body
from modelseal.errors import BackendError, ConfigError, FormatError
from modelseal.kbs.admin_api import ADMIN, PUBLISHER, READER, AdminApi
from modelseal.kbs.admin_auth import AdminPrincipal, mint_admin_token
from modelseal.kbs.errors_http import (
    ITA_ERRORS,
    ItaBadRequest,
    ItaLoginFailed,
    ItaUnsupportedMedia,
)
from modelseal.kbs.ita_model import (
    KeyCreateRequest,
    KeyUpdateRequest,
    LoginRequest,
    PolicyRequest,
    go_json,
)
from modelseal.kbs.ita_service import ItaService
from modelseal.kbs.ita_users import SUBJECT_PREFIX, ItaUsers
from modelseal.kbs.state import KbsState

__all__ = ["ITA_TOKEN_TTL", "LOGIN_SLOTS", "MAX_ITA_BODY", "ita_router"]

log = logging.getLogger("modelseal.kbs.ita")

#: ITA's bearer tokens live 5 minutes by default
ITA_TOKEN_TTL = 300
MAX_ITA_BODY = 64 * 1024
#: password checks running at once per KBS process. Each is one scrypt run (32 MiB and a
#: core for about 0.2 s) that anyone may start, since ``/token`` needs no token:
#: without a cap a burst of logins takes that memory per request and every thread of the
#: pool the transfer and admin routes run in. Logins over the cap wait their turn.
LOGIN_SLOTS = 2
JSON = "application/json"
JWT = "application/jwt"

M = TypeVar("M", bound=BaseModel)


def _json(value: Any, status: int = 200) -> Response:
    return Response(
        go_json(value), status_code=status, media_type=JSON, headers={"Cache-Control": "no-store"}
    )


def _headers(request: Request, *, content_type: str | None, accept: str | None) -> None:
    """ITA's exact header checks: ``Content-Type`` first, then ``Accept``."""
    if content_type is not None and request.headers.get("content-type") != content_type:
        raise ItaUnsupportedMedia("Invalid Content-type header")
    if accept is not None and request.headers.get("accept") != accept:
        raise ItaUnsupportedMedia("Invalid Accept header")


async def _body(request: Request, model: type[M], *, accept: str = JSON) -> M:
    """The capped body decoded as ``model`` (unknown members refused, as ITA's decoder),
    after ITA's header checks. The body is read first, so an oversized body is refused as
    such whatever its headers."""
    body = await read_body(request, MAX_ITA_BODY)
    _headers(request, content_type=JSON, accept=accept)
    if not body:
        raise ItaBadRequest("Request body was not provided")
    try:
        check_json(body, what="request body", max_bytes=MAX_ITA_BODY, max_depth=8)
        return model.model_validate_json(body)
    except FormatError:
        raise ItaBadRequest("Failed to JSON-decode request body") from None
    except ValidationError as exc:
        problems = [
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}"
            for e in exc.errors(include_url=False, include_input=False)
        ]
        raise ItaBadRequest(
            "Failed to JSON-decode request body: " + "; ".join(problems[:5])
        ) from None


def ita_router(state: KbsState, tee_kinds: tuple[str, ...], users: ItaUsers | None) -> APIRouter:
    """The ITA registration routes over ``state``; ``users`` enables ``POST /token``
    logins (None: every login fails, bearer tokens from ``kbs token`` still work)."""
    service = ItaService(state, tee_kinds)
    api = AdminApi(state)
    router = APIRouter(route_class=guarded_route(ITA_ERRORS))
    Reader = Annotated[AdminPrincipal, Depends(api.role(READER))]  # noqa: N806
    Publisher = Annotated[AdminPrincipal, Depends(api.role(PUBLISHER))]  # noqa: N806
    Admin = Annotated[AdminPrincipal, Depends(api.role(ADMIN))]  # noqa: N806

    async def run(where: str, who: AdminPrincipal, work: Callable[[], Response]) -> Response:
        response = await run_in_threadpool(work)
        log.info("ITA %s by %s: %d", where, who.actor, response.status_code)
        return response

    def deleted(
        delete: Callable[[AdminPrincipal, str], None], who: AdminPrincipal, id_: str
    ) -> Response:
        delete(who, id_)
        return Response(status_code=204)

    logins = anyio.CapacityLimiter(LOGIN_SLOTS)

    def login(req: LoginRequest) -> Response:
        # without a user file nobody logs in and there is no user name to hide: no scrypt
        # run, so a KBS that never enabled logins spends nothing on them
        user = None
        if users is not None:
            try:
                user = users.authenticate(req.username, req.password)
            except ConfigError as exc:  # edited into something unusable since the start
                log.error("ITA logins are unavailable: %s", exc)
                raise BackendError("the ITA user file is unusable") from None
        if user is None:
            log.warning("ITA login refused for a user name of %d characters", len(req.username))
            raise ItaLoginFailed("wrong user name or password")
        token = mint_admin_token(
            state.admin_key,
            role=user.role,
            ttl=ITA_TOKEN_TTL,
            subject=SUBJECT_PREFIX + user.name,
            namespaces=user.namespaces,
            now=state.clock.now(),
        )
        log.info("ITA login by %s (role %s)", user.name, user.role)
        return Response(
            token.encode(),
            media_type="text/plain; charset=utf-8",
            headers={
                "Strict-Transport-Security": "max-age=63072000; includeSubDomains",
                "Cache-Control": "no-store",
            },
        )

    @router.post("/token")
    async def token(request: Request) -> Response:
        req = await _body(request, LoginRequest, accept=JWT)
        if not req.username or not req.password:
            raise ItaBadRequest(
                "400: Username and password of a valid user must be provided to get the token"
            )
        return await anyio.to_thread.run_sync(login, req, limiter=logins)

    @router.get("/version")
    async def version() -> Response:
        return _json(
            {
                "name": "Key Broker Service (modelseal)",
                "version": __version__,
                "gitHash": "",
                "buildDate": "",
            }
        )

    # --- key-transfer policies -------------------------------------------------------

    @router.post("/key-transfer-policies")
    async def create_policy(who: Publisher, request: Request) -> Response:
        req = await _body(request, PolicyRequest)
        return await run("create policy", who, lambda: _json(service.create_policy(who, req), 201))

    @router.get("/key-transfer-policies")
    async def list_policies(who: Reader, request: Request) -> Response:
        _headers(request, content_type=None, accept=JSON)
        return await run("list policies", who, lambda: _json(service.list_policies(who)))

    @router.get("/key-transfer-policies/{policy_id}")
    async def get_policy(who: Reader, policy_id: str, request: Request) -> Response:
        _headers(request, content_type=None, accept=JSON)
        return await run("get policy", who, lambda: _json(service.get_policy(who, policy_id)))

    @router.delete("/key-transfer-policies/{policy_id}")
    async def delete_policy(who: Admin, policy_id: str) -> Response:
        return await run(
            "delete policy", who, lambda: deleted(service.delete_policy, who, policy_id)
        )

    # --- keys --------------------------------------------------------------------------

    @router.post("/keys")
    async def create_key(who: Publisher, request: Request) -> Response:
        req = await _body(request, KeyCreateRequest)
        return await run("create key", who, lambda: _json(service.create_key(who, req), 201))

    @router.get("/keys")
    async def search_keys(who: Reader, request: Request) -> Response:
        _headers(request, content_type=None, accept=JSON)
        params = request.query_params
        if len(params.keys()) > 50:
            raise ItaBadRequest(
                "Invalid query parameters provided. Number of query parameters exceeded "
                "maximum value"
            )
        query = {name: params[name] for name in params}
        return await run("search keys", who, lambda: _json(service.search_keys(who, query)))

    @router.get("/keys/{key_id}")
    async def get_key(who: Reader, key_id: str, request: Request) -> Response:
        _headers(request, content_type=None, accept=JSON)
        return await run("get key", who, lambda: _json(service.get_key(who, key_id)))

    @router.put("/keys/{key_id}")
    async def update_key(who: Publisher, key_id: str, request: Request) -> Response:
        req = await _body(request, KeyUpdateRequest)
        return await run(
            "update key", who, lambda: _json(service.update_key(who, key_id, req), 201)
        )

    @router.delete("/keys/{key_id}")
    async def delete_key(who: Admin, key_id: str) -> Response:
        return await run("delete key", who, lambda: deleted(service.delete_key, who, key_id))

    @router.post("/keys/{key_id}")
    async def export_key(who: Reader, key_id: str) -> Response:
        return await run("export key", who, lambda: service.refuse_export(who, key_id))

    return router
