"""Admin/owner API of the KBS, mounted at ``/modelseal/v1`` (docs/guides/kbs-operator.md).

Every route requires ``Authorization: Bearer <admin JWT>`` (``modelseal kbs token``): no
token, a forged or expired one gives 401, a token whose role does not allow the operation
403. There is no anonymous or "allow all" mode. Key ids are the three path segments
``/keys/<repo>/<type>/<tag>``. Key bytes are accepted on import and never returned.

Status codes: 400 malformed body or invalid policy, 401 bad token, 403 wrong role,
404 unknown key, 409 conflicting key, 503 storage outage. Body ``{"type", "detail"}``.
"""

# No ``from __future__ import annotations``: FastAPI reads the routes' ``Annotated``
# dependencies at definition time, and they name per-app objects local to a function.

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from modelseal._internal.bounded import check_json
from modelseal._internal.encoding import b64url_decode
from modelseal._internal.http_edge import PROBLEM_TYPE_PREFIX, guarded_route, read_body
from modelseal.crypto.secret import SecretBytes
from modelseal.errors import AuthorizationError, FormatError, TokenError
from modelseal.kbs.admin_auth import AdminPrincipal, verify_admin_token
from modelseal.kbs.audit import AuditEntry
from modelseal.kbs.errors_http import ADMIN_ERRORS, AdminBadRequest
from modelseal.kbs.state import KbsState
from modelseal.keystore.paths import is_valid_key_id, validate_model_digest
from modelseal.keystore.store import KeyRecord
from modelseal.policy.document import parse_policy_text
from modelseal.protocol.admin import (
    AuditEntryModel,
    AuditPage,
    AuditVerifyResponse,
    KeyInfo,
    KeyList,
    ModelDigestRequest,
    ModelList,
    ModelRecord,
    PolicyInfo,
    PutKeyRequest,
    RotateResponse,
    iso_time,
)

__all__ = [
    "ADMIN",
    "AUDITOR",
    "PROBLEM_TYPE_PREFIX",
    "PUBLISHER",
    "AdminApi",
    "admin_router",
    "trustee_admin_router",
]

log = logging.getLogger("modelseal.kbs.admin")

MAX_ADMIN_BODY = 256 * 1024

ADMIN = frozenset({"admin"})
PUBLISHER = frozenset({"admin", "publisher"})
AUDITOR = frozenset({"admin", "auditor"})
READER = frozenset({"admin", "publisher", "auditor"})


def _json(model: BaseModel, status: int = 200) -> Response:
    return Response(
        model.model_dump_json().encode(),
        status_code=status,
        media_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


def _key_info(record: KeyRecord, created: bool | None = None) -> KeyInfo:
    return KeyInfo(
        key_id=record.key_id,
        state=record.state,
        kek_id=record.kek_id,
        size=record.size,
        model_digest=record.model_digest,
        policy_digest=record.policy_digest,
        created_at=iso_time(record.created_at),
        updated_at=iso_time(record.updated_at),
        created=created,
    )


def _entry(entry: AuditEntry) -> AuditEntryModel:
    return AuditEntryModel(**entry.to_json())


# --- request dependencies ----------------------------------------------------------------


async def key_id(repo: str, kind: str, tag: str) -> str:
    """Dependency: the key id named by the three path segments."""
    return f"{repo}/{kind}/{tag}"


KeyId = Annotated[str, Depends(key_id)]


async def raw_body(request: Request) -> bytes:
    """Dependency: the request body, capped at :data:`MAX_ADMIN_BODY`."""
    return await read_body(request, MAX_ADMIN_BODY)


RawBody = Annotated[bytes, Depends(raw_body)]


class JsonBody:
    """Dependency: the capped body validated as a pydantic request model; the problems
    are named by location, never echoing the input."""

    def __init__(self, model: type[BaseModel]) -> None:
        self.model = model

    async def __call__(self, body: RawBody) -> Any:
        check_json(body, what="request body", max_bytes=MAX_ADMIN_BODY)
        try:
            return self.model.model_validate_json(body)
        except ValidationError as exc:
            problems = [
                f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}"
                for e in exc.errors(include_url=False, include_input=False)
            ]
            raise AdminBadRequest("invalid request: " + "; ".join(problems[:10])) from None


#: the ``after`` query parameter of an audit page: a sequence number the databases can hold
#: (SQLite's INTEGER and PostgreSQL's BIGINT are 64-bit signed)
AuditAfter = Annotated[int, Query(ge=0, le=2**63 - 1)]
#: the ``limit`` query parameter of an audit page: at most 1,000 entries per page
AuditLimit = Annotated[int, Query(ge=1, le=1000)]


def model_digest_param(raw: str | None) -> str | None:
    return None if raw is None else validate_model_digest(raw)


class AdminApi:
    """The admin operations over one :class:`KbsState`; the routes only wire requests in.

    Every operation authenticates first (:meth:`role` is the routes' first dependency, so
    no body is read for a bad token), then works in the thread pool: the key store and the
    audit log are blocking database calls.
    """

    def __init__(self, state: KbsState) -> None:
        self.state = state

    def role(self, allowed: frozenset[str]) -> Callable[..., Awaitable[AdminPrincipal]]:
        """Dependency: the verified caller, whose role must be one of ``allowed``.

        The dependencies here are coroutines: FastAPI runs plain functions in the thread
        pool, a hop that costs more than the work they do."""

        async def principal(
            request: Request,
            authorization: Annotated[str | None, Header()] = None,
        ) -> AdminPrincipal:
            if authorization is None:
                raise TokenError("no Authorization header")
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise TokenError("Authorization is not a Bearer token")
            who = verify_admin_token(
                token.strip(), self.state.admin_key, now=self.state.clock.now()
            )
            if not who.roles & allowed:
                await run_in_threadpool(self._deny_role, who, allowed, request)
            return who

        return principal

    def _deny_role(self, who: AdminPrincipal, allowed: frozenset[str], request: Request) -> None:
        """403, audited as a tenant denial is: a token whose role does not allow the route.

        The audit row names the route by its template (``/keys/{repo}/{kind}/{tag}``, without
        the prefix the router is included under), never
        the raw path, and the key only when the path holds a valid key id: what the caller
        typed is bounded and clean before it is written anywhere."""
        template = str(getattr(request.scope.get("route"), "path", "")) or "<unmatched>"
        params = request.path_params
        kid = "/".join(str(params.get(k, "")) for k in ("repo", "kind", "tag"))
        operation = f"{request.method} {template}"
        self.state.audit.record(
            actor=who.actor,
            action="authz.deny",
            key_id=kid if is_valid_key_id(kid) else None,
            tee=None,
            claims_digest=None,
            policy_digest=None,
            decision="deny",
            reasons=[
                f"{operation}: role {', '.join(sorted(who.roles))} may not; "
                f"needs {' or '.join(sorted(allowed))}"
            ],
        )
        log.warning("admin %s by %s denied: role not allowed", operation, who.actor)
        who.require(allowed)  # raises the documented 403

    async def run(self, where: str, who: AdminPrincipal, work: Callable[[], Response]) -> Response:
        response = await run_in_threadpool(work)
        log.info("admin %s by %s: %d", where, who.actor, response.status_code)
        return response

    # --- operations (blocking; called in the thread pool) -------------------------------

    def tenant(self, who: AdminPrincipal, kid: str, what: str, *, is_key: bool = True) -> None:
        """403, audited, unless ``who`` may manage ``kid`` (a publisher token only covers
        its namespaces; see :mod:`modelseal.kbs.admin_auth`). An id that is no key id at
        all is a plain 400, never written to the audit log or the log (bounded, no
        control characters). ``is_key=False``: ``kid`` only stands for the namespace of
        what is asked for (ITA policies, which serve the keys of one namespace), and the
        audit row names no key."""
        if who.covers(kid):
            return
        if not is_valid_key_id(kid):
            raise AdminBadRequest("invalid key id: expected repo/type/tag")
        self.state.audit.record(
            actor=who.actor,
            action="authz.deny",
            key_id=kid if is_key else None,
            tee=None,
            claims_digest=None,
            policy_digest=None,
            decision="deny",
            reasons=[f"{what}: outside the token's namespaces {sorted(who.namespaces or ())}"],
        )
        log.warning("admin %s of %s by %s denied: outside its namespaces", what, kid, who.actor)
        raise AuthorizationError("this token may not touch keys outside its namespaces")

    def list_keys(self, who: AdminPrincipal, digest: str | None) -> Response:
        records = self.state.keys.list_keys(model_digest=model_digest_param(digest))
        return _json(KeyList(keys=[_key_info(r) for r in records if who.covers(r.key_id)]))

    def get_key(self, who: AdminPrincipal, kid: str) -> Response:
        self.tenant(who, kid, "key.read")
        return _json(_key_info(self.state.keys.get(kid)))

    def put_key(self, who: AdminPrincipal, kid: str, req: PutKeyRequest) -> Response:
        self.tenant(who, kid, "key.put")
        dek = None
        if req.key is not None:
            try:
                dek = SecretBytes(b64url_decode(req.key, what="key"))
            except FormatError:
                raise AdminBadRequest("key is not base64url") from None
        try:
            record, created = self.state.keys.put(
                kid, dek, policy=req.policy, model_digest=req.model_digest, actor=who.actor
            )
        finally:
            if dek is not None:
                dek.wipe()
        return _json(_key_info(record, created), 201 if created else 200)

    def revoke_key(self, who: AdminPrincipal, kid: str) -> Response:
        return _json(_key_info(self.state.keys.revoke(kid, actor=who.actor)))

    def delete_key(self, who: AdminPrincipal, kid: str) -> Response:
        return _json(_key_info(self.state.keys.delete(kid, actor=who.actor)))

    def policy_info(self, who: AdminPrincipal, kid: str) -> Response:
        self.tenant(who, kid, "policy.read")
        policy = self.state.keys.get_policy(kid)
        return _json(
            PolicyInfo(
                key_id=kid,
                policy=None if policy is None else policy.to_document(),
                policy_digest=None if policy is None else policy.digest,
            )
        )

    def set_policy(self, who: AdminPrincipal, kid: str, body: bytes) -> Response:
        self.tenant(who, kid, "policy.set")
        policy = parse_policy_text(body)
        self.state.keys.set_policy(kid, policy, actor=who.actor)
        return self.policy_info(who, kid)

    def clear_policy(self, who: AdminPrincipal, kid: str) -> Response:
        return _json(_key_info(self.state.keys.clear_policy(kid, actor=who.actor)))

    def bind_model(self, who: AdminPrincipal, kid: str, req: ModelDigestRequest) -> Response:
        self.tenant(who, kid, "model.bind")
        record = self.state.keys.set_model_digest(kid, req.model_digest, actor=who.actor)
        return _json(_key_info(record))

    def list_models(self, who: AdminPrincipal, digest: str | None) -> Response:
        models = [
            ModelRecord(
                model_digest=r.model_digest,
                key_id=r.key_id,
                state=r.state,
                policy_digest=r.policy_digest,
            )
            for r in self.state.keys.list_keys(model_digest=model_digest_param(digest))
            if r.model_digest is not None and who.covers(r.key_id)
        ]
        return _json(ModelList(models=models))

    def rotate_kek(self, who: AdminPrincipal) -> Response:
        result = self.state.keys.rotate_kek(actor=who.actor)
        return _json(
            RotateResponse(
                old_kek_id=result.old_kek_id,
                new_kek_id=result.new_kek_id,
                rewrapped=result.rewrapped,
            )
        )

    def audit_page(self, after: int, limit: int) -> Response:
        rows = self.state.audit.entries(after=after, limit=limit)
        next_after = rows[-1].seq if len(rows) == limit else None
        return _json(AuditPage(entries=[_entry(e) for e in rows], next_after=next_after))

    def audit_verify(self) -> Response:
        return _json(AuditVerifyResponse(**self.state.audit.verify().to_json()))

    def import_resource(self, who: AdminPrincipal, kid: str, body: bytes) -> Response:
        self.tenant(who, kid, "key.put")
        dek = SecretBytes(body)
        try:
            _, created = self.state.keys.put(kid, dek, actor=who.actor)
        finally:
            dek.wipe()
        return Response(status_code=201 if created else 200)

    def delete_resource(self, who: AdminPrincipal, kid: str) -> Response:
        self.state.keys.delete(kid, actor=who.actor)
        return Response(status_code=200)


def admin_router(state: KbsState) -> APIRouter:
    """Routes of the admin API over ``state``; the KBS app mounts it at ``/modelseal/v1``."""
    api = AdminApi(state)
    router = APIRouter(route_class=guarded_route(ADMIN_ERRORS))
    Reader = Annotated[AdminPrincipal, Depends(api.role(READER))]  # noqa: N806
    Publisher = Annotated[AdminPrincipal, Depends(api.role(PUBLISHER))]  # noqa: N806
    Admin = Annotated[AdminPrincipal, Depends(api.role(ADMIN))]  # noqa: N806
    Auditor = Annotated[AdminPrincipal, Depends(api.role(AUDITOR))]  # noqa: N806

    @router.get("/whoami")
    async def whoami(who: Reader) -> Response:
        me: dict[str, Any] = {"subject": who.subject, "roles": sorted(who.roles)}
        if who.namespaces is not None:
            me["namespaces"] = sorted(who.namespaces)
        body = json.dumps(me).encode()
        return await api.run("whoami", who, lambda: Response(body, media_type="application/json"))

    @router.get("/keys")
    async def list_keys(who: Reader, model_digest: str | None = None) -> Response:
        return await api.run("list keys", who, lambda: api.list_keys(who, model_digest))

    @router.get("/keys/{repo}/{kind}/{tag}")
    async def get_key(who: Reader, kid: KeyId) -> Response:
        return await api.run("get key", who, lambda: api.get_key(who, kid))

    @router.put("/keys/{repo}/{kind}/{tag}")
    async def put_key(
        who: Publisher, kid: KeyId, req: Annotated[PutKeyRequest, Depends(JsonBody(PutKeyRequest))]
    ) -> Response:
        return await api.run("put key", who, lambda: api.put_key(who, kid, req))

    @router.post("/keys/{repo}/{kind}/{tag}/revoke")
    async def revoke_key(who: Admin, kid: KeyId) -> Response:
        return await api.run("revoke key", who, lambda: api.revoke_key(who, kid))

    @router.delete("/keys/{repo}/{kind}/{tag}")
    async def delete_key(who: Admin, kid: KeyId) -> Response:
        return await api.run("delete key", who, lambda: api.delete_key(who, kid))

    @router.get("/keys/{repo}/{kind}/{tag}/policy")
    async def get_policy(who: Reader, kid: KeyId) -> Response:
        return await api.run("get policy", who, lambda: api.policy_info(who, kid))

    @router.put("/keys/{repo}/{kind}/{tag}/policy")
    async def set_policy(who: Publisher, kid: KeyId, body: RawBody) -> Response:
        return await api.run("set policy", who, lambda: api.set_policy(who, kid, body))

    @router.delete("/keys/{repo}/{kind}/{tag}/policy")
    async def clear_policy(who: Admin, kid: KeyId) -> Response:
        return await api.run("clear policy", who, lambda: api.clear_policy(who, kid))

    @router.put("/keys/{repo}/{kind}/{tag}/model")
    async def bind_model(
        who: Publisher,
        kid: KeyId,
        req: Annotated[ModelDigestRequest, Depends(JsonBody(ModelDigestRequest))],
    ) -> Response:
        return await api.run("bind model", who, lambda: api.bind_model(who, kid, req))

    @router.get("/models")
    async def list_models(who: Reader, digest: str | None = None) -> Response:
        return await api.run("list models", who, lambda: api.list_models(who, digest))

    @router.post("/kek/rotate")
    async def rotate_kek(who: Admin) -> Response:
        return await api.run("rotate KEK", who, lambda: api.rotate_kek(who))

    @router.get("/audit")
    async def audit(who: Auditor, after: AuditAfter = 0, limit: AuditLimit = 100) -> Response:
        # A value outside the bounds, or not an integer, is FastAPI's validation error:
        # the admin table's 400 bad-request (authentication still runs first).
        return await api.run("read audit", who, lambda: api.audit_page(after, limit))

    @router.get("/audit/verify")
    async def audit_verify(who: Auditor) -> Response:
        return await api.run("verify audit", who, api.audit_verify)

    return router


def trustee_admin_router(state: KbsState) -> APIRouter:
    """Trustee ``kbs-client`` compatibility, mounted at the root of the app.

    ``kbs-client --url URL config --admin-token-file F set-resource --path repo/type/tag
    --resource-file key.bin`` sends ``POST /kbs/v0/resource/<path>`` with the raw bytes and
    the pre-minted bearer token in F, so a token from ``modelseal kbs token`` works. The
    bytes are imported as a key (16/24/32 bytes) with our semantics: identical re-upload is
    a no-op, different bytes for an existing id are refused (409) because sealed models
    depend on them. The key has no release policy until one is set (deny by default).
    ``DELETE`` (``kbs-client ... delete-resource``) needs the admin role.
    """
    api = AdminApi(state)
    router = APIRouter(route_class=guarded_route(ADMIN_ERRORS))
    Publisher = Annotated[AdminPrincipal, Depends(api.role(PUBLISHER))]  # noqa: N806
    Admin = Annotated[AdminPrincipal, Depends(api.role(ADMIN))]  # noqa: N806

    @router.post("/kbs/v0/resource/{repo}/{kind}/{tag}")
    async def set_resource(who: Publisher, kid: KeyId, body: RawBody) -> Response:
        return await api.run(
            "trustee set-resource", who, lambda: api.import_resource(who, kid, body)
        )

    @router.delete("/kbs/v0/resource/{repo}/{kind}/{tag}")
    async def delete_resource(who: Admin, kid: KeyId) -> Response:
        return await api.run("trustee delete-resource", who, lambda: api.delete_resource(who, kid))

    return router
