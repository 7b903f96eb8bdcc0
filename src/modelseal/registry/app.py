"""The registry HTTP API (CONTRACTS seam 4): model records and sealed blobs, no keys.

Reads are open (the registry only ever holds ciphertext and public metadata; the KBS decides
who gets a key). Writes need ``Authorization: Bearer <upload token>``. Every blob transfer
streams in bounded chunks in both directions.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import anyio.to_thread
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from modelseal.blobstore.base import (
    BlobInfo,
    BlobStore,
    BlobTooLarge,
    DigestMismatch,
)
from modelseal.errors import BackendError, ConfigError, Error, FormatError, NotFound, TokenError
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

__all__ = ["create_app"]

log = logging.getLogger(__name__)

_ERRORS = "https://modelseal.dev/errors/"


class _HttpError(Exception):
    def __init__(self, status: int, kind: str, detail: str, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status, self.kind, self.detail, self.headers = status, kind, detail, headers or {}


def _problem(
    status: int, kind: str, detail: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"type": _ERRORS + kind, "detail": detail}, status_code=status, headers=headers
    )


_FRAMEWORK_KINDS = {404: "not-found", 405: "method-not-allowed"}


def _status_of(exc: Error) -> tuple[int, str]:
    if isinstance(exc, NotFound):
        return 404, "not-found"
    if isinstance(exc, RecordConflict):
        return 409, "conflict"
    if isinstance(exc, BlobTooLarge):
        return 413, "too-large"
    if isinstance(exc, TokenError):
        return 401, "unauthorized"
    if isinstance(exc, ConfigError | FormatError):
        return 400, "bad-request"
    if isinstance(exc, BackendError):
        return 503, "backend"
    return 500, "internal"


def create_app(settings: RegistrySettings, store: BlobStore) -> FastAPI:
    """The registry ASGI app over ``store`` with records and the upload token in
    ``settings.data_dir``."""
    records = RecordStore(settings.data_dir)
    upload_token = ensure_upload_token(settings.data_dir)
    # Registering a version and starting an upload into it exclude each other, and a version
    # with uploads in flight cannot be registered: so a registered record always describes
    # the blobs that stay stored (one registry process per data directory).
    version_lock = anyio.Lock()
    uploads_in_flight: dict[tuple[str, str], int] = {}

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

    @app.exception_handler(Error)
    async def _on_error(_request: Request, exc: Error) -> Response:
        status, kind = _status_of(exc)
        if status >= 500:
            log.warning("registry backend failure: %s", exc)
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return _problem(status, kind, str(exc) or kind, headers)

    @app.exception_handler(_HttpError)
    async def _on_http(_request: Request, exc: _HttpError) -> Response:
        return _problem(exc.status, exc.kind, exc.detail, exc.headers)

    # What the framework answers on its own (unknown route, wrong method, invalid query
    # parameter, a bug) gets the same shape instead of FastAPI's ``{"detail": ...}``.
    @app.exception_handler(HTTPException)
    async def _on_framework(_request: Request, exc: HTTPException) -> Response:
        status = exc.status_code
        kind = _FRAMEWORK_KINDS.get(status, "bad-request" if status < 500 else "internal")
        allow = {k: v for k, v in (exc.headers or {}).items() if k.lower() == "allow"}
        return _problem(status, kind, kind.replace("-", " "), allow)

    @app.exception_handler(RequestValidationError)
    async def _on_invalid(_request: Request, exc: RequestValidationError) -> Response:
        # FastAPI's default echoes the offending input; name only where it was
        where = ", ".join(".".join(str(p) for p in e.get("loc", ())) for e in exc.errors()[:5])
        return _problem(400, "bad-request", f"invalid request parameter: {where}"[:300])

    @app.exception_handler(Exception)
    async def _on_bug(_request: Request, exc: Exception) -> Response:
        # ServerErrorMiddleware still logs the traceback of this bug after we answer
        return _problem(500, "internal", "internal error")

    def base_url(request: Request) -> str:
        return settings.public_url or str(request.base_url)

    def require_upload_token(request: Request) -> None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode("utf-8", "replace"), upload_token.encode("ascii")
        ):
            raise TokenError("missing or wrong upload token")

    def info_of(request: Request, record: ModelRecord) -> dict[str, Any]:
        info: ModelInfo = record.to_info(base_url(request))
        return info.to_data()

    # -- health ------------------------------------------------------------------------------

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    # -- model records -----------------------------------------------------------------------

    @app.get("/models")
    async def list_models(request: Request) -> Response:
        latest = await anyio.to_thread.run_sync(records.latest_all)
        body = ModelList(models=[r.to_info(base_url(request)) for r in latest])
        return JSONResponse(body.to_data())

    @app.get("/models/{model_id}")
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

    @app.get("/models/{model_id}/versions")
    async def list_versions(request: Request, model_id: str) -> Response:
        found = await anyio.to_thread.run_sync(records.versions, model_id)
        if not found:
            raise NotFound(f"no model {model_id!r}")
        return JSONResponse({"models": [info_of(request, r) for r in found]})

    @app.put("/models/{model_id}/versions/{version}")
    async def register_model(request: Request, model_id: str, version: str) -> Response:
        require_upload_token(request)
        check_name(model_id, what="model id")
        check_name(version, what="version")
        body = await _read_limited(request, settings.max_record_size)
        try:
            registration = ModelRegistration.from_json(body, max_bytes=settings.max_record_size)
        except WireError as exc:
            raise _HttpError(422, "invalid-registration", describe(exc)) from None
        async with version_lock:
            if uploads_in_flight.get((model_id, version)):
                raise RecordConflict("uploads into this version are still in progress")
            for f in registration.all_files():
                key = blob_key(model_id, version, f.blob)
                try:
                    blob = await store.stat(key)
                except NotFound:
                    raise RecordConflict(f"blob {f.blob!r} was not uploaded") from None
                if blob.size != f.sealed_size or blob.sha256 != f.sha256:
                    raise RecordConflict(f"blob {f.blob!r} differs from the registration")
            record, created = await anyio.to_thread.run_sync(
                records.register, model_id, version, registration
            )
        if created:
            log.info("registered model %s version %s", model_id, version)
        return JSONResponse(info_of(request, record), status_code=201 if created else 200)

    @app.delete("/models/{model_id}/versions/{version}")
    async def delete_model(request: Request, model_id: str, version: str) -> Response:
        require_upload_token(request)
        async with version_lock:
            record = await anyio.to_thread.run_sync(records.delete, model_id, version)
            for f in record.registration.all_files():
                try:
                    await store.delete(blob_key(model_id, version, f.blob))
                except NotFound:
                    continue
        return Response(status_code=204)

    # -- blobs -------------------------------------------------------------------------------

    @app.api_route("/blobs/{model_id}/{version}/{path:path}", methods=["GET", "HEAD"])
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
        return await blob_body(store, info, start, end, status_code=status, headers=headers)

    @app.put("/blobs/{model_id}/{version}/{path:path}")
    async def put_blob(request: Request, model_id: str, version: str, path: str) -> Response:
        require_upload_token(request)
        key = blob_key(model_id, version, path)
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise ConfigError("invalid Content-Length")
            if int(declared) > settings.max_blob_size:
                raise BlobTooLarge(f"blob larger than the limit of {settings.max_blob_size} bytes")
        expected = _content_digest(request.headers.get("content-digest"))
        slot = (model_id, version)
        async with version_lock:
            if await anyio.to_thread.run_sync(records.exists, model_id, version):
                raise RecordConflict(
                    f"model {model_id!r} version {version!r} is registered; its blobs are immutable"
                )
            uploads_in_flight[slot] = uploads_in_flight.get(slot, 0) + 1
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
        except DigestMismatch as exc:
            raise _HttpError(400, "digest-mismatch", str(exc)) from None
        finally:
            uploads_in_flight[slot] -= 1
            if not uploads_in_flight[slot]:
                del uploads_in_flight[slot]
        headers = _blob_headers(info)
        return JSONResponse(
            {"key": info.key, "size": info.size, "sha256": info.sha256},
            status_code=200 if existed else 201,
            headers=headers,
        )

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


async def _read_limited(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BlobTooLarge(f"body larger than {limit} bytes")
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise BlobTooLarge(f"body larger than {limit} bytes")
    except ClientDisconnect:
        raise ConfigError("request interrupted by the client") from None
    return bytes(body)
