"""Admin/owner API of the KBS, mounted at ``/modelseal/v1`` (DESIGN section 5).

Every route requires ``Authorization: Bearer <admin JWT>`` (``modelseal kbs token``): no
token, a forged or expired one gives 401, a token whose role does not allow the operation
403. There is no anonymous or "allow all" mode. Key ids are the three path segments
``/keys/<repo>/<type>/<tag>``. Key bytes are accepted on import and never returned.

Status codes: 400 malformed body or invalid policy, 401 bad token, 403 wrong role,
404 unknown key, 409 conflicting key, 503 storage outage. Body ``{"type", "detail"}``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from modelseal._internal.bounded import check_json
from modelseal._internal.encoding import b64url_decode
from modelseal.crypto.secret import SecretBytes
from modelseal.errors import (
    AuthorizationError,
    BackendError,
    ConfigError,
    DecryptionError,
    Error,
    FormatError,
    NotFound,
    TokenError,
)
from modelseal.kbs.admin_auth import AdminPrincipal, verify_admin_token
from modelseal.kbs.audit import AuditEntry
from modelseal.kbs.errors_http import ADMIN_PROBLEM_PREFIX, admin_problem
from modelseal.kbs.state import KbsState
from modelseal.keystore.paths import validate_model_digest
from modelseal.keystore.store import KeyConflict, KeyRecord
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
    "admin_router",
    "trustee_admin_router",
]

log = logging.getLogger("modelseal.kbs.admin")

PROBLEM_TYPE_PREFIX = ADMIN_PROBLEM_PREFIX
MAX_ADMIN_BODY = 256 * 1024

ADMIN = frozenset({"admin"})
PUBLISHER = frozenset({"admin", "publisher"})
AUDITOR = frozenset({"admin", "auditor"})
READER = frozenset({"admin", "publisher", "auditor"})


class _BadRequest(Error):
    """Malformed admin request body (HTTP 400)."""


_problem = admin_problem


def _error_response(exc: BaseException, where: str) -> Response:
    """Map an error to a response. Messages of modelseal errors carry no secrets."""
    if isinstance(exc, TokenError):
        log.warning("admin %s: rejected token: %s", where, exc)
        return _problem(401, "unauthorized", "missing, invalid or expired admin token")
    if isinstance(exc, AuthorizationError):
        log.warning("admin %s: %s", where, exc)
        return _problem(403, "forbidden", str(exc))
    if isinstance(exc, NotFound):
        return _problem(404, "not-found", str(exc))
    if isinstance(exc, KeyConflict):
        return _problem(409, "conflict", str(exc))
    if isinstance(exc, _BadRequest | ConfigError | FormatError):
        return _problem(400, "bad-request", str(exc))
    if isinstance(exc, BackendError):
        log.error("admin %s: backend failure: %s", where, exc)
        return _problem(503, "unavailable", "storage temporarily unavailable, retry later")
    if isinstance(exc, DecryptionError):
        log.error("admin %s: %s", where, exc)
        return _problem(500, "integrity", str(exc))
    log.error("admin %s failed: %s", where, type(exc).__name__, exc_info=True)
    return _problem(500, "internal", "internal error")


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


def _validated(model: type[BaseModel], body: bytes) -> Any:
    check_json(body, what="request body", max_bytes=MAX_ADMIN_BODY)
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        problems = [
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}"
            for e in exc.errors(include_url=False, include_input=False)
        ]
        raise _BadRequest("invalid request: " + "; ".join(problems[:10])) from None


async def _body(request: Request) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_ADMIN_BODY:
            raise _BadRequest(f"request body larger than {MAX_ADMIN_BODY} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _int_param(request: Request, name: str, default: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    # isascii: str.isdigit() accepts e.g. "²", which int() then rejects (a 500 otherwise).
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
        raise _BadRequest(f"{name} must be a non-negative integer")
    return int(raw)


def _principal(state: KbsState, request: Request, allowed: frozenset[str]) -> AdminPrincipal:
    header = request.headers.get("authorization")
    if header is None:
        raise TokenError("no Authorization header")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise TokenError("Authorization is not a Bearer token")
    who = verify_admin_token(token.strip(), state.admin_key, now=state.clock.now())
    who.require(allowed)
    return who


async def _run(
    state: KbsState,
    request: Request,
    where: str,
    allowed: frozenset[str],
    work: Callable[[AdminPrincipal, bytes], Response],
    *,
    with_body: bool = False,
) -> Response:
    """Authenticate first (no body is read for a bad token), then work in the thread pool."""
    try:
        who = _principal(state, request, allowed)
        body = await _body(request) if with_body else b""
        response = await run_in_threadpool(work, who, body)
    except Exception as exc:
        return _error_response(exc, where)
    log.info("admin %s by %s: %d", where, who.actor, response.status_code)
    return response


def admin_router(state: KbsState) -> APIRouter:
    """Routes of the admin API over ``state``; K1's app mounts it at ``/modelseal/v1``."""
    router = APIRouter()

    async def run(
        request: Request,
        where: str,
        allowed: frozenset[str],
        work: Callable[[AdminPrincipal, bytes], Response],
        *,
        with_body: bool = False,
    ) -> Response:
        return await _run(state, request, where, allowed, work, with_body=with_body)

    def key_id(repo: str, kind: str, tag: str) -> str:
        return f"{repo}/{kind}/{tag}"

    # --- identity ----------------------------------------------------------------------

    @router.get("/whoami")
    async def whoami(request: Request) -> Response:
        def work(who: AdminPrincipal, _: bytes) -> Response:
            body = {"subject": who.subject, "roles": sorted(who.roles)}
            return Response(json.dumps(body).encode(), media_type="application/json")

        return await run(request, "whoami", READER, work)

    # --- keys --------------------------------------------------------------------------

    @router.get("/keys")
    async def list_keys(request: Request) -> Response:
        def work(who: AdminPrincipal, _: bytes) -> Response:
            raw = request.query_params.get("model_digest")
            digest = None if raw is None else validate_model_digest(raw)
            records = state.keys.list_keys(model_digest=digest)
            return _json(KeyList(keys=[_key_info(r) for r in records]))

        return await run(request, "list keys", READER, work)

    @router.get("/keys/{repo}/{kind}/{tag}")
    async def get_key(repo: str, kind: str, tag: str, request: Request) -> Response:
        kid = key_id(repo, kind, tag)
        return await run(
            request, "get key", READER, lambda who, _: _json(_key_info(state.keys.get(kid)))
        )

    @router.put("/keys/{repo}/{kind}/{tag}")
    async def put_key(repo: str, kind: str, tag: str, request: Request) -> Response:
        kid = key_id(repo, kind, tag)

        def work(who: AdminPrincipal, body: bytes) -> Response:
            req: PutKeyRequest = _validated(PutKeyRequest, body)
            dek = None
            if req.key is not None:
                try:
                    dek = SecretBytes(b64url_decode(req.key, what="key"))
                except FormatError:
                    raise _BadRequest("key is not base64url") from None
            try:
                record, created = state.keys.put(
                    kid, dek, policy=req.policy, model_digest=req.model_digest, actor=who.actor
                )
            finally:
                if dek is not None:
                    dek.wipe()
            return _json(_key_info(record, created), 201 if created else 200)

        return await run(request, "put key", PUBLISHER, work, with_body=True)

    @router.post("/keys/{repo}/{kind}/{tag}/revoke")
    async def revoke_key(repo: str, kind: str, tag: str, request: Request) -> Response:
        kid = key_id(repo, kind, tag)
        return await run(
            request,
            "revoke key",
            ADMIN,
            lambda who, _: _json(_key_info(state.keys.revoke(kid, actor=who.actor))),
        )

    @router.delete("/keys/{repo}/{kind}/{tag}")
    async def delete_key(repo: str, kind: str, tag: str, request: Request) -> Response:
        kid = key_id(repo, kind, tag)
        return await run(
            request,
            "delete key",
            ADMIN,
            lambda who, _: _json(_key_info(state.keys.delete(kid, actor=who.actor))),
        )

    # --- policies and model digests ----------------------------------------------------

    def policy_info(kid: str) -> PolicyInfo:
        policy = state.keys.get_policy(kid)
        return PolicyInfo(
            key_id=kid,
            policy=None if policy is None else policy.to_document(),
            policy_digest=None if policy is None else policy.digest,
        )

    @router.get("/keys/{repo}/{kind}/{tag}/policy")
    async def get_policy(repo: str, kind: str, tag: str, request: Request) -> Response:
        kid = key_id(repo, kind, tag)
        return await run(request, "get policy", READER, lambda who, _: _json(policy_info(kid)))

    @router.put("/keys/{repo}/{kind}/{tag}/policy")
    async def set_policy(repo: str, kind: str, tag: str, request: Request) -> Response:
        kid = key_id(repo, kind, tag)

        def work(who: AdminPrincipal, body: bytes) -> Response:
            policy = parse_policy_text(body)
            state.keys.set_policy(kid, policy, actor=who.actor)
            return _json(policy_info(kid))

        return await run(request, "set policy", PUBLISHER, work, with_body=True)

    @router.delete("/keys/{repo}/{kind}/{tag}/policy")
    async def clear_policy(repo: str, kind: str, tag: str, request: Request) -> Response:
        kid = key_id(repo, kind, tag)
        return await run(
            request,
            "clear policy",
            ADMIN,
            lambda who, _: _json(_key_info(state.keys.clear_policy(kid, actor=who.actor))),
        )

    @router.put("/keys/{repo}/{kind}/{tag}/model")
    async def bind_model(repo: str, kind: str, tag: str, request: Request) -> Response:
        kid = key_id(repo, kind, tag)

        def work(who: AdminPrincipal, body: bytes) -> Response:
            req: ModelDigestRequest = _validated(ModelDigestRequest, body)
            record = state.keys.set_model_digest(kid, req.model_digest, actor=who.actor)
            return _json(_key_info(record))

        return await run(request, "bind model", PUBLISHER, work, with_body=True)

    @router.get("/models")
    async def list_models(request: Request) -> Response:
        def work(who: AdminPrincipal, _: bytes) -> Response:
            raw = request.query_params.get("digest")
            wanted = None if raw is None else validate_model_digest(raw)
            models = [
                ModelRecord(
                    model_digest=r.model_digest,
                    key_id=r.key_id,
                    state=r.state,
                    policy_digest=r.policy_digest,
                )
                for r in state.keys.list_keys(model_digest=wanted)
                if r.model_digest is not None
            ]
            return _json(ModelList(models=models))

        return await run(request, "list models", READER, work)

    # --- KEK -----------------------------------------------------------------------------

    @router.post("/kek/rotate")
    async def rotate_kek(request: Request) -> Response:
        def work(who: AdminPrincipal, _: bytes) -> Response:
            result = state.keys.rotate_kek(actor=who.actor)
            return _json(
                RotateResponse(
                    old_kek_id=result.old_kek_id,
                    new_kek_id=result.new_kek_id,
                    rewrapped=result.rewrapped,
                )
            )

        return await run(request, "rotate KEK", ADMIN, work)

    # --- audit ---------------------------------------------------------------------------

    @router.get("/audit")
    async def audit(request: Request) -> Response:
        def work(who: AdminPrincipal, _: bytes) -> Response:
            after = _int_param(request, "after", 0)
            limit = _int_param(request, "limit", 100)
            if after < 0 or not 1 <= limit <= 1000:
                raise _BadRequest("after must be >= 0 and limit between 1 and 1000")
            rows = state.audit.entries(after=after, limit=limit)
            next_after = rows[-1].seq if len(rows) == limit else None
            return _json(AuditPage(entries=[_entry(e) for e in rows], next_after=next_after))

        return await run(request, "read audit", AUDITOR, work)

    @router.get("/audit/verify")
    async def audit_verify(request: Request) -> Response:
        def work(who: AdminPrincipal, _: bytes) -> Response:
            result = state.audit.verify()
            return _json(AuditVerifyResponse(**result.to_json()))

        return await run(request, "verify audit", AUDITOR, work)

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
    router = APIRouter()

    @router.post("/kbs/v0/resource/{repo}/{kind}/{tag}")
    async def set_resource(repo: str, kind: str, tag: str, request: Request) -> Response:
        kid = f"{repo}/{kind}/{tag}"

        def work(who: AdminPrincipal, body: bytes) -> Response:
            dek = SecretBytes(body)
            try:
                _, created = state.keys.put(kid, dek, actor=who.actor)
            finally:
                dek.wipe()
            return Response(status_code=201 if created else 200)

        return await _run(state, request, "trustee set-resource", PUBLISHER, work, with_body=True)

    @router.delete("/kbs/v0/resource/{repo}/{kind}/{tag}")
    async def delete_resource(repo: str, kind: str, tag: str, request: Request) -> Response:
        kid = f"{repo}/{kind}/{tag}"

        def work(who: AdminPrincipal, _: bytes) -> Response:
            state.keys.delete(kid, actor=who.actor)
            return Response(status_code=200)

        return await _run(state, request, "trustee delete-resource", ADMIN, work)

    return router
