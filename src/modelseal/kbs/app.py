"""The KBS ASGI application: Trustee-compatible RCAR + resource endpoints, health, admin.

``create_app(settings, state)`` wires the pieces: sessions in the KBS database (so replicas
work), the attestation service, the token service (key file in the data directory), the
resource service over ``state.release_unit``, and the admin and CNAP transfer routers.
Verifiers that may do network I/O and database reads run in the thread pool, and writes go
to the unit runner (group commit on SQLite), so one slow collateral fetch or a queued writer
never stalls the event loop; the small CPU steps
(binding digest, ES256, JWE) run on the loop, where they are cheapest.
"""

# No ``from __future__ import annotations``: FastAPI reads the routes' ``Annotated``
# dependencies at definition time, and they name per-app objects local to a function.

import asyncio
import contextvars
import dataclasses
import functools
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import msgspec
from fastapi import APIRouter, FastAPI
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from modelseal import __version__
from modelseal._internal.clock import Clock, SystemClock
from modelseal._internal.encoding import b64_encode
from modelseal._internal.http_edge import (
    BodyLimit,
    RequestObserver,
    guard,
    guarded_route,
    read_body,
)
from modelseal.crypto.jose.jwk import recipient_from_jwk
from modelseal.crypto.jose.jwt import TokenSigningKey
from modelseal.errors import BackendError, TokenError
from modelseal.kbs.admin_api import admin_router, trustee_admin_router
from modelseal.kbs.attestation import AttestationService
from modelseal.kbs.errors_http import RCAR_ERRORS, install_error_handlers, problem, table_for
from modelseal.kbs.ita_api import ita_router
from modelseal.kbs.ita_users import ItaUsers
from modelseal.kbs.release import released
from modelseal.kbs.resource import ResourceService, bearer_token
from modelseal.kbs.sessions import SessionStore
from modelseal.kbs.settings import KbsSettings
from modelseal.kbs.state import KbsState
from modelseal.kbs.tokens import TokenService
from modelseal.kbs.transfer_api import transfer_router
from modelseal.kbs.units import unit_runner
from modelseal.protocol.binding import device_digest, runtime_data_digest
from modelseal.protocol.claims import Claims
from modelseal.protocol.kbs import (
    COOKIE_NAME,
    AttestationRequest,
    AuthRequest,
    check_resource_path,
    parse_model,
    version_supported,
)
from modelseal.protocol.wire import WireModel
from modelseal.tee.registry import QUOTE_TRANSFER_TYPE, kinds_for_transfer_type

log = logging.getLogger("modelseal.kbs")
T = TypeVar("T")
M = TypeVar("M", bound=WireModel)

NONCE_BYTES = 32
#: where the admin API and the ITA/CNAP transfer API are mounted
ADMIN_PREFIX = "/modelseal/v1"
TRANSFER_PREFIX = "/kbs/v1"
_NO_STORE = {"Cache-Control": "no-store"}


async def _parsed(request: Request, model: type[M], what: str, limit: int) -> M:
    """The request body, capped at ``limit``, decoded as a protocol model (msgspec)."""
    return parse_model(model, await read_body(request, limit), what=what)


class Kbs:
    """The KBS's services, shared by the route handlers of one app."""

    def __init__(self, settings: KbsSettings, state: KbsState, clock: Clock) -> None:
        self.settings = settings
        self.state = state
        self.clock = clock
        self.attestation = AttestationService(settings.tee_configs(), clock=clock)
        self.sessions = SessionStore(state.db, ttl=settings.session_ttl, clock=clock)
        self.tokens = TokenService(
            TokenSigningKey.load_or_create(settings.signing_key_path),
            issuer=settings.issuer,
            audience=settings.audience,
            ttl=settings.token_ttl,
            insecure=settings.accepts_insecure,
            clock=clock,
        )
        self.resources = ResourceService(state, self.tokens)
        # The RCAR path's blocking calls get a pool of their own: handing work to it costs
        # about a quarter less CPU than anyio's general thread pool (measured ~63 vs ~85 us
        # per call), and admin requests in anyio's pool never queue behind releases.
        self._pool = ThreadPoolExecutor(
            # on SQLite the pool only reads and verifies: writes go to the group commit
            max_workers=3 if state.db.is_sqlite else 32,
            thread_name_prefix="kbs-rcar",
        )
        # Session writes and release decisions: group commit on SQLite (see units.py).
        self.units = unit_runner(state.db, self._pool)

    def cookie(self, session_id: str, max_age: float) -> str:
        attrs = f"{COOKIE_NAME}={session_id}; Max-Age={max(0, int(max_age))}; Path=/kbs"
        attrs += "; HttpOnly; SameSite=Strict"
        if self.settings.tls:
            attrs += "; Secure"
        return attrs

    async def db(self, fn: Callable[..., T], *args: Any) -> T:
        """Run blocking database reads in the thread pool, never on the event loop.

        Each call is one transaction on a connection of its own (``read_connection``): a
        slow disk stalls that request only. Writes are units for :attr:`units`. The work
        runs in a copy of the request's context, so its log lines carry the request id.
        """
        ctx = contextvars.copy_context()
        return await asyncio.get_running_loop().run_in_executor(self._pool, ctx.run, fn, *args)

    async def verify(
        self, tee: str, evidence: Any, digest: bytes, init_data: bytes | None
    ) -> Claims:
        """Evidence verification: inline for pure-CPU kinds, else in the thread pool
        (verifiers may fetch collateral over the network)."""
        call = functools.partial(
            self.attestation.verify,
            tee,
            evidence,
            expected_report_data=digest,
            init_data=init_data,
        )
        if self.attestation.is_inline(tee):
            return call()
        ctx = contextvars.copy_context()
        claims: Claims = await asyncio.get_running_loop().run_in_executor(self._pool, ctx.run, call)
        return claims

    async def verify_devices(self, additional_evidence: str, digest: bytes) -> tuple[Claims, ...]:
        """Device (GPU) evidence of a composite attestation; local material only, but a
        few milliseconds per device, so it runs in the thread pool."""
        call = functools.partial(
            self.attestation.verify_devices, additional_evidence, expected_report_data=digest
        )
        ctx = contextvars.copy_context()
        devices: tuple[Claims, ...] = await asyncio.get_running_loop().run_in_executor(
            self._pool, ctx.run, call
        )
        return devices

    # --- RCAR -------------------------------------------------------------------------

    async def auth(self, req: AuthRequest) -> Response:
        if not version_supported(req.version):
            log.info("auth refused: protocol version %r", req.version)
            return problem(
                401,
                "AttestationError",
                "KBS Client Protocol Version Mismatch: accepted >=0.4.0,<0.5.0",
            )
        self.attestation.check_primary(req.tee)
        nonce = b64_encode(os.urandom(NONCE_BYTES))
        session = self.sessions.new(req.tee, nonce)
        await self.units.run(self.sessions.insert_unit(session))
        self.sessions.remember(session)
        if self.sessions.sweep_due():
            try:
                await self.units.run(self.sessions.sweep_unit())
            except BackendError:
                log.warning("could not sweep expired RCAR sessions; will retry")
        body_out = msgspec.json.encode({"nonce": nonce, "extra-params": ""})
        headers = {**_NO_STORE, "Set-Cookie": self.cookie(session.id, self.settings.session_ttl)}
        return Response(body_out, media_type="application/json", headers=headers)

    async def attest(self, req: AttestationRequest, session_id: str | None) -> Response:
        if not session_id:
            raise TokenError("attest without a session cookie")
        pending = self.sessions.remembered(session_id)
        if pending is None:
            pending = await self.db(self.sessions.pending, session_id)
        runtime = req.runtime_data
        if runtime.nonce != pending.nonce:
            await self.units.run(self.sessions.burn_unit(session_id))
            raise TokenError("runtime-data nonce does not match the session nonce")
        recipient = recipient_from_jwk(runtime.tee_pubkey)
        digest = runtime_data_digest(
            runtime.nonce, runtime.tee_pubkey, req.tee_evidence.additional_evidence
        )
        init_data = req.init_data.body.encode("utf-8") if req.init_data is not None else None
        try:
            claims = await self.verify(
                pending.tee, req.tee_evidence.primary_evidence, digest, init_data
            )
            if req.tee_evidence.additional_evidence:
                devices = await self.verify_devices(
                    req.tee_evidence.additional_evidence,
                    device_digest(runtime.nonce, runtime.tee_pubkey),
                )
                claims = dataclasses.replace(claims, devices=devices)
        except Exception:
            await self.units.run(self.sessions.burn_unit(session_id))
            raise
        token, jti, exp = self.tokens.issue(
            claims, nonce=runtime.nonce, tee_pubkey=runtime.tee_pubkey, recipient=recipient
        )
        session_expiry = await self.units.run(self.sessions.complete_unit(pending, token, exp))
        # the session id is a (short-lived) credential: it is never logged, the token id is
        log.info(
            "attested tee=%s token=%s%s",
            claims.tee,
            jti,
            " INSECURE (development TEE kind)" if claims.insecure else "",
        )
        cookie = self.cookie(session_id, session_expiry - self.clock.now())
        headers = {**_NO_STORE, "Set-Cookie": cookie}
        # msgspec: json.dumps spends ~12 us scanning a 5 KB token for characters to escape
        return Response(
            msgspec.json.encode({"token": token}), media_type="application/json", headers=headers
        )

    async def resource(self, path: str, request: Request) -> Response:
        check_resource_path(path)
        token = bearer_token(request.headers.get("authorization"))
        session_id = request.cookies.get(COOKIE_NAME)
        if token is None and session_id:
            token = await self.db(self.sessions.token_for, session_id)
        if token is None:
            raise TokenError("no token: send the session cookie or Authorization: Bearer")
        verified, recipient = self.resources.verify(token)
        client = request.client.host if request.client else "unknown"
        outcome = await self.units.run(
            self.resources.release_unit(path, verified, f"rcar:{client}")
        )
        dek = released(outcome)
        body = self.resources.wrap(path, dek, verified, recipient)
        return Response(body, media_type="application/json", headers=_NO_STORE)

    def ready(self) -> bool:
        try:
            with self.state.db.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception:  # any driver failure means not ready
            log.warning("readiness check: database unavailable", exc_info=True)
            return False
        return True


def _mount_state_routers(app: FastAPI, kbs: Kbs) -> None:
    """Mount the admin API (``/modelseal/v1``) and the ITA/CNAP transfer API (``/kbs/v1``)."""
    app.include_router(admin_router(kbs.state), prefix=ADMIN_PREFIX)
    app.include_router(trustee_admin_router(kbs.state))  # Trustee kbs-client set-resource
    app.include_router(
        transfer_router(kbs.state, kbs.attestation, allow_oneshot=kbs.settings.allow_cnap_oneshot),
        prefix=TRANSFER_PREFIX,
    )
    users = kbs.settings.ita_users
    app.include_router(
        ita_router(
            kbs.state,
            kinds_for_transfer_type(QUOTE_TRANSFER_TYPE, kbs.attestation.configs),
            None if users is None else ItaUsers(users),
        ),
        prefix=TRANSFER_PREFIX,
    )


def create_app(
    settings: KbsSettings,
    state: KbsState,
    *,
    clock: Clock | None = None,
) -> FastAPI:
    """The KBS FastAPI app for validated ``settings`` over an opened ``state``."""
    kbs = Kbs(settings, state, clock or SystemClock())
    for kind in settings.insecure_kinds():
        log.warning(
            "INSECURE: the %s TEE is accepted; its unsigned evidence gets keys if a policy "
            "allows tee %r. Every token is stamped insecure. Never use this in production.",
            kind,
            kind,
        )
    app = FastAPI(
        title="modelseal KBS",
        version=__version__,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        # The KBS exports no OpenTelemetry; left on, FastAPI asks the OpenTelemetry API for
        # its providers on every request (environment lookups, a few % of a release's CPU).
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.kbs = kbs
    install_error_handlers(app)

    # Health and the RCAR endpoints answer from the RCAR error table.
    rcar = APIRouter(route_class=guarded_route(RCAR_ERRORS), include_in_schema=False)
    limit = settings.max_body_bytes

    @rcar.get("/healthz")
    async def healthz() -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    @rcar.get("/readyz")
    async def readyz() -> Response:
        if await run_in_threadpool(kbs.ready):
            return Response(b'{"status":"ready"}', media_type="application/json")
        return problem(503, "BackendUnavailable", "database unavailable")

    # The RCAR endpoints are plain Starlette routes guarded by the same table: they decode
    # their bodies with the protocol models (msgspec), and FastAPI's parameter machinery
    # would add ~130 us of CPU to each ~480 us auth request (measured in-process, medians
    # of 8 alternating rounds of 1,500 requests) without adding a check.
    async def auth(request: Request) -> Response:
        return await kbs.auth(await _parsed(request, AuthRequest, "auth request", limit))

    async def attest(request: Request) -> Response:
        req = await _parsed(request, AttestationRequest, "attestation request", limit)
        return await kbs.attest(req, request.cookies.get(COOKIE_NAME))

    async def resource(request: Request) -> Response:
        return await kbs.resource(str(request.path_params["path"]), request)

    routes = [
        Route("/kbs/v0/auth", guard(RCAR_ERRORS, "auth", auth), methods=["POST"]),
        Route("/kbs/v0/attest", guard(RCAR_ERRORS, "attest", attest), methods=["POST"]),
        Route(
            "/kbs/v0/resource/{path:path}",
            guard(RCAR_ERRORS, "resource", resource),
            methods=["GET"],
        ),
    ]
    app.router.routes.extend(routes)
    app.include_router(rcar)
    _mount_state_routers(app, kbs)

    # The RCAR routes go through the framework like every other route: a pure-ASGI layer
    # that served them before the router saved no measurable CPU per release (callgrind
    # and interleaved CPU-time runs; docs/concepts/decisions.md).
    app.add_middleware(BodyLimit, limit=limit, table_for=table_for)
    # Outermost: request ids and latencies cover the body-limit refusals too. The access
    # line is at debug level: each RCAR request already logs its decision at info, and one
    # more line per request costs several percent of a release's CPU.
    app.add_middleware(
        RequestObserver,
        server="kbs",
        prefixes=(ADMIN_PREFIX, TRANSFER_PREFIX),
        access_level=logging.DEBUG,
    )
    return app
