"""The registry HTTP API: model records and sealed blobs, no keys.

Reads are open (the registry only ever holds ciphertext and public metadata; the KBS decides
who gets a key). Writes need ``Authorization: Bearer <upload token>``. Every blob transfer
streams in bounded chunks in both directions.

Errors are problem documents ``{"type": "https://modelseal.dev/problems/<kind>", "detail"}``
from :data:`REGISTRY_ERRORS` (:mod:`modelseal._internal.http_edge`), for the routes' own
failures and for what the framework answers on its own alike.
"""

# No ``from __future__ import annotations``: FastAPI reads the routes' ``Annotated``
# dependencies at definition time, and they name the per-app service object.

import base64
import binascii
import hmac
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, Final

import anyio.to_thread
from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.requests import ClientDisconnect

from modelseal._internal import http_edge
from modelseal._internal.http_edge import (
    PROBLEM_TYPE_PREFIX,
    BodyTooLarge,
    ErrorTable,
    Problem,
    ProblemShape,
    guarded_route,
    read_body,
)
from modelseal.blobstore.base import (
    BlobInfo,
    BlobStore,
    BlobTooLarge,
    DigestMismatch,
    RedirectingStore,
)
from modelseal.errors import BackendError, ConfigError, FormatError, NotFound, TokenError
from modelseal.protocol.model_info import (
    ModelInfo,
    ModelList,
    ModelRecord,
    ModelRegistration,
    blob_key,
    check_name,
)
from modelseal.protocol.wire import WireError, describe
from modelseal.registry.blob_response import blob_body
from modelseal.registry.ranges import RangeNotSatisfiable, etag_matches, parse_range
from modelseal.registry.records import RecordConflict, RecordStore
from modelseal.registry.settings import RegistrySettings, ensure_upload_token

__all__ = ["REGISTRY_ERRORS", "Registry", "create_app"]

log = logging.getLogger(__name__)


class InvalidRegistration(FormatError):
    """A registration document that does not match the schema (HTTP 422)."""


_BAD_REQUEST: Final = Problem(400, "bad-request")
_TOO_LARGE: Final = Problem(413, "too-large")

REGISTRY_ERRORS: Final = ErrorTable(
    "registry",
    ProblemShape(PROBLEM_TYPE_PREFIX, status_headers={401: {"WWW-Authenticate": "Bearer"}}),
    {
        NotFound: Problem(404, "not-found"),
        RecordConflict: Problem(409, "conflict"),
        BlobTooLarge: _TOO_LARGE,
        BodyTooLarge: _TOO_LARGE,
        DigestMismatch: Problem(400, "digest-mismatch"),
        InvalidRegistration: Problem(422, "invalid-registration"),
        TokenError: Problem(401, "unauthorized"),
        ConfigError: _BAD_REQUEST,
        FormatError: _BAD_REQUEST,
        BackendError: Problem(503, "unavailable"),
    },
    default=Problem(500, "internal", "internal error"),
    framework={
        400: Problem(400, "bad-request", "bad request"),
        404: Problem(404, "not-found", "not found"),
        405: Problem(405, "method-not-allowed", "method not allowed"),
        500: Problem(500, "internal", "internal error"),
    },
    too_large=Problem(413, "too-large", "request body too large"),
    logger=log,
    # reads are open and a missing model is an everyday answer: refusals go to debug
    refusal_level=logging.DEBUG,
    name_invalid_parameters=True,
)


class Registry:
    """The registry's state (records, blob store, upload token) and its write operations.

    Registering a version and starting an upload into it exclude each other, and a version
    with uploads in flight cannot be registered: so a registered record always describes
    the blobs that stay stored (one registry process per data directory).
    """

    def __init__(self, settings: RegistrySettings, store: BlobStore) -> None:
        self.settings = settings
        self.store = store
        self.records = RecordStore(settings.data_dir)
        self.upload_token = ensure_upload_token(settings.data_dir)
        self.version_lock = anyio.Lock()
        self.uploads_in_flight: dict[tuple[str, str], int] = {}

    # -- request dependencies ------------------------------------------------------------

    async def require_upload_token(
        self, authorization: Annotated[str | None, Header()] = None
    ) -> None:
        """Dependency of every write: ``Authorization: Bearer <upload token>``."""
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode("utf-8", "replace"), self.upload_token.encode("ascii")
        ):
            raise TokenError("missing or wrong upload token")

    async def registration(self, request: Request) -> ModelRegistration:
        """Dependency: the capped body parsed as a registration document."""
        limit = self.settings.max_record_size
        body = await read_body(request, limit)
        try:
            return ModelRegistration.from_json(body, max_bytes=limit)
        except WireError as exc:
            raise InvalidRegistration(describe(exc)) from None

    # -- operations ------------------------------------------------------------------------

    def base_url(self, request: Request) -> str:
        return self.settings.public_url or str(request.base_url)

    def info_of(self, request: Request, record: ModelRecord) -> dict[str, Any]:
        info: ModelInfo = record.to_info(self.base_url(request))
        return info.to_data()

    async def register(
        self, model_id: str, version: str, registration: ModelRegistration
    ) -> tuple[ModelRecord, bool]:
        async with self.version_lock:
            if self.uploads_in_flight.get((model_id, version)):
                raise RecordConflict("uploads into this version are still in progress")
            for f in registration.all_files():
                key = blob_key(model_id, version, f.blob)
                try:
                    blob = await self.store.stat(key)
                except NotFound:
                    raise RecordConflict(f"blob {f.blob!r} was not uploaded") from None
                if blob.size != f.sealed_size or blob.sha256 != f.sha256:
                    raise RecordConflict(f"blob {f.blob!r} differs from the registration")
            record, created = await anyio.to_thread.run_sync(
                self.records.register, model_id, version, registration
            )
        if created:
            log.info("registered model %s version %s", model_id, version)
        return record, created

    async def delete(self, model_id: str, version: str) -> None:
        async with self.version_lock:
            record = await anyio.to_thread.run_sync(self.records.delete, model_id, version)
            for f in record.registration.all_files():
                try:
                    await self.store.delete(blob_key(model_id, version, f.blob))
                except NotFound:
                    continue

    async def upload(
        self, request: Request, model_id: str, version: str, path: str
    ) -> tuple[BlobInfo, bool]:
        """Stream a blob into the store (verified against ``Content-Digest`` if sent);
        True when it was new. Blobs of a registered version are immutable."""
        settings, store = self.settings, self.store
        key = blob_key(model_id, version, path)
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise ConfigError("invalid Content-Length")
            if int(declared) > settings.max_blob_size:
                raise BlobTooLarge(f"blob larger than the limit of {settings.max_blob_size} bytes")
        expected = _content_digest(request.headers.get("content-digest"))
        slot = (model_id, version)
        async with self.version_lock:
            if await anyio.to_thread.run_sync(self.records.exists, model_id, version):
                raise RecordConflict(
                    f"model {model_id!r} version {version!r} is registered; its blobs are immutable"
                )
            self.uploads_in_flight[slot] = self.uploads_in_flight.get(slot, 0) + 1
        try:
            existed = True
            try:
                await store.stat(key)
            except NotFound:
                existed = False
            info = await store.put(
                key,
                request.stream(),
                max_size=settings.max_blob_size,
                expected_sha256=expected,
            )
        except ClientDisconnect:
            raise ConfigError("upload interrupted by the client") from None
        finally:
            self.uploads_in_flight[slot] -= 1
            if not self.uploads_in_flight[slot]:
                del self.uploads_in_flight[slot]
        return info, not existed


async def model_slot(model_id: str, version: str) -> tuple[str, str]:
    """Dependency: a model id and version that are valid names."""
    check_name(model_id, what="model id")
    check_name(version, what="version")
    return model_id, version


def create_app(
    settings: RegistrySettings, store: BlobStore, *, mapped_bodies: bool = False
) -> FastAPI:
    """The registry ASGI app over ``store`` with records and the upload token in
    ``settings.data_dir``. ``mapped_bodies`` sends local blobs from memory maps, which only
    the server stack named in :mod:`modelseal.registry.blob_response` may ask for."""
    registry = Registry(settings, store)
    records = registry.records
    redirect = settings.redirect_blobs
    if redirect is not None and not isinstance(store, RedirectingStore):
        raise ConfigError("--redirect-blobs needs a store clients can reach: an s3:// store")

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await store.aclose()

    app = FastAPI(
        title="modelseal registry",
        version="1",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.settings = settings
    app.state.store = store
    app.state.records = records
    app.state.registry = registry
    app.state.mapped_bodies = mapped_bodies
    http_edge.install_error_handlers(app, lambda _path: REGISTRY_ERRORS)
    router = APIRouter(route_class=guarded_route(REGISTRY_ERRORS))
    upload = [Depends(registry.require_upload_token)]
    info_of = registry.info_of

    # -- health ------------------------------------------------------------------------------

    @router.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    # -- model records -----------------------------------------------------------------------

    @router.get("/models")
    async def list_models(request: Request) -> Response:
        latest = await anyio.to_thread.run_sync(records.latest_all)
        body = ModelList(models=[r.to_info(registry.base_url(request)) for r in latest])
        return JSONResponse(body.to_data())

    @router.get("/models/{model_id}")
    async def get_model(
        request: Request,
        model_id: str,
        version: Annotated[str | None, Query(max_length=255)] = None,
    ) -> Response:
        check_name(model_id, what="model id")
        if version is not None:
            check_name(version, what="version")
        record = await anyio.to_thread.run_sync(records.get, model_id, version)
        return JSONResponse(info_of(request, record))

    @router.get("/models/{model_id}/versions")
    async def list_versions(request: Request, model_id: str) -> Response:
        found = await anyio.to_thread.run_sync(records.versions, model_id)
        if not found:
            raise NotFound(f"no model {model_id!r}")
        return JSONResponse({"models": [info_of(request, r) for r in found]})

    @router.put("/models/{model_id}/versions/{version}", dependencies=upload)
    async def register_model(
        request: Request,
        slot: Annotated[tuple[str, str], Depends(model_slot)],
        registration: Annotated[ModelRegistration, Depends(registry.registration)],
    ) -> Response:
        record, created = await registry.register(*slot, registration)
        return JSONResponse(info_of(request, record), status_code=201 if created else 200)

    @router.delete("/models/{model_id}/versions/{version}", dependencies=upload)
    async def delete_model(model_id: str, version: str) -> Response:
        await registry.delete(model_id, version)
        return Response(status_code=204)

    # -- blobs -------------------------------------------------------------------------------

    @router.api_route("/blobs/{model_id}/{version}/{path:path}", methods=["GET", "HEAD"])
    async def get_blob(request: Request, model_id: str, version: str, path: str) -> Response:
        info = await store.stat(blob_key(model_id, version, path))
        headers = _blob_headers(info)
        if_match = request.headers.get("if-match")
        if if_match is not None and not etag_matches(if_match, info.etag, weak=False):
            return Response(status_code=412, headers=headers)
        if_none_match = request.headers.get("if-none-match")
        if if_none_match is not None and etag_matches(if_none_match, info.etag, weak=True):
            return Response(status_code=304, headers=headers)
        span: tuple[int, int] | None = None
        range_header = request.headers.get("range")
        if_range = request.headers.get("if-range")
        use_range = if_range is None or if_range.strip() == info.etag
        if request.method == "GET" and range_header is not None and use_range:
            try:
                span = parse_range(range_header, info.size)
            except RangeNotSatisfiable:
                headers["Content-Range"] = f"bytes */{info.size}"
                return Response(status_code=416, headers=headers)
        start, end = span if span is not None else (0, info.size)
        headers["Content-Length"] = str(end - start)
        status = 200
        if span is not None:
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{info.size}"
        if request.method == "HEAD":
            return Response(status_code=status, headers=headers)
        if redirect is not None and isinstance(store, RedirectingStore):
            # the client repeats its request (Range included) at the store; the sealed
            # format authenticates every byte it reads there, as it does for bytes from here
            location = store.direct_url(info, expires=redirect)
            return Response(
                status_code=307,
                headers={"Location": location, "ETag": info.etag, "Cache-Control": "no-store"},
            )
        return await blob_body(
            store, info, start, end, status_code=status, headers=headers, mapped=mapped_bodies
        )

    @router.put("/blobs/{model_id}/{version}/{path:path}", dependencies=upload)
    async def put_blob(request: Request, model_id: str, version: str, path: str) -> Response:
        info, created = await registry.upload(request, model_id, version, path)
        return JSONResponse(
            {"key": info.key, "size": info.size, "sha256": info.sha256},
            status_code=201 if created else 200,
            headers=_blob_headers(info),
        )

    app.include_router(router)
    app.add_middleware(http_edge.RequestObserver, server="registry")
    return app


def _blob_headers(info: BlobInfo) -> dict[str, str]:
    digest = base64.b64encode(bytes.fromhex(info.sha256)).decode("ascii")
    return {
        "ETag": info.etag,
        "Accept-Ranges": "bytes",
        "Repr-Digest": f"sha-256=:{digest}:",
        "Cache-Control": "no-cache",
    }


def _content_digest(header: str | None) -> str | None:
    """The SHA-256 (hex) announced in an RFC 9530 ``Content-Digest`` header, if any."""
    if header is None:
        return None
    for item in header.split(","):
        name, sep, value = item.strip().partition("=")
        if not sep or name.strip().lower() != "sha-256":
            continue
        value = value.strip()
        if not (value.startswith(":") and value.endswith(":") and len(value) > 2):
            raise ConfigError("malformed Content-Digest")
        try:
            raw = base64.b64decode(value[1:-1], validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError("malformed Content-Digest") from None
        if len(raw) != 32:
            raise ConfigError("malformed Content-Digest")
        return raw.hex()
    return None
