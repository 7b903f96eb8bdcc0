"""HTTP client of the model registry for publishers (uploads, registration, reads).

Uploads stream a file from disk with its length and SHA-256 announced up front
(``Content-Length``, RFC 9530 ``Content-Digest``), so the registry can refuse an oversize
body at once and never stores bytes that differ from what was hashed here. ``blob_status``
(``HEAD``) lets a resumed publish skip blobs the registry already holds.
"""

from __future__ import annotations

import base64
import os
import random
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, TypeVar

import httpx

from modelseal._internal.bounded_http import IDENTITY, Deadline, Reply, read_body, send
from modelseal.errors import (
    AuthorizationError,
    BackendError,
    BlobNotFound,
    ConfigError,
    Error,
    ModelNotFound,
    TokenError,
    TransientError,
)
from modelseal.protocol.model_info import (
    ModelInfo,
    ModelList,
    ModelRegistration,
    blob_key,
    check_name,
)
from modelseal.protocol.wire import WireError, WireModel, decode_json

__all__ = ["BlobStatus", "RegistryClient", "RegistryConflict"]

_CHUNK: Final = 1 << 20
_ATTEMPTS: Final = 4
#: largest registry answer read (the model list; one model info is at most 16 MiB)
MAX_BODY_BYTES: Final = 64 << 20
_M = TypeVar("_M", bound=WireModel)


def _decode(model: type[_M], response: Reply, what: str) -> _M:
    """A success body as ``model``; anything else (a proxy's HTML page, a truncated or foreign
    JSON body) is a ``BackendError`` naming the request, never a validation traceback."""
    try:
        return model.from_json(response.content)
    except WireError as exc:
        raise BackendError(f"{what}: the registry answered an unexpected body") from exc


def _tls(verify: bool | str) -> bool | ssl.SSLContext:
    """httpx verification: ``True``/``False``, or a CA bundle path turned into a context."""
    if isinstance(verify, bool):
        return verify
    try:
        return ssl.create_default_context(cafile=verify)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load CA bundle {verify}: {exc}") from None


class RegistryConflict(ConfigError):
    """The registry refused a write because the version is already published differently."""


@dataclass(frozen=True)
class BlobStatus:
    size: int
    sha256: str | None


class RegistryClient:
    """Synchronous registry client; ``token`` is the registry upload token (writes only)."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        verify: bool | str = True,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
        attempts: int = _ATTEMPTS,
        backoff: float = 0.25,
    ) -> None:
        if attempts < 1 or backoff < 0:
            raise ConfigError("attempts must be at least 1 and backoff non-negative")
        self._attempts, self._backoff = attempts, backoff
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"registry URL must be http(s)://...: {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self._token = token
        self._timeout = timeout
        self._client = httpx.Client(
            base_url=self.base_url,
            verify=_tls(verify),
            timeout=httpx.Timeout(timeout, connect=10.0),
            transport=transport,
            follow_redirects=False,
            headers=IDENTITY,
        )

    @property
    def can_write(self) -> bool:
        """Whether an upload token was given (uploads and registration need one)."""
        return bool(self._token)

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    # -- plumbing ----------------------------------------------------------------------------

    def _auth(self) -> dict[str, str]:
        if not self._token:
            raise ConfigError(
                "the registry needs its upload token for writes: pass --registry-token "
                "(the content of <registry data dir>/upload-token)"
            )
        return {"Authorization": f"Bearer {self._token}"}

    def _send(self, method: str, url: str, what: str, **options: Any) -> Reply:
        """One request with bounded, jittered retries on connection errors and 5xx; its
        answer is read within :data:`MAX_BODY_BYTES` and ``timeout`` seconds."""
        for attempt in range(1, self._attempts + 1):
            try:
                response = send(
                    self._client,
                    method,
                    url,
                    limit=MAX_BODY_BYTES,
                    seconds=self._timeout,
                    what=f"registry {what}",
                    **options,
                )
            except httpx.TransportError as exc:
                if attempt == self._attempts:
                    raise TransientError(
                        f"registry unreachable during {what}: {type(exc).__name__}"
                    ) from exc
            else:
                if response.status_code < 500 or attempt == self._attempts:
                    return response
            delay = min(4.0, self._backoff * 2**attempt)
            time.sleep(delay * (0.5 + random.random() / 2))  # noqa: S311 - jitter, not crypto
        raise AssertionError("unreachable")

    @staticmethod
    def _raise_for(response: Reply, what: str, *, missing: type[Error]) -> None:
        status = response.status_code
        if status < 400:
            return
        try:
            body = decode_json(response.content)
            detail = str(body.get("detail", ""))[:300] if isinstance(body, dict) else ""
        except WireError:
            detail = ""
        text = f"{what}: registry answered {status}" + (f" ({detail})" if detail else "")
        if status == 401:
            raise TokenError(text + "; check --registry-token")
        if status == 403:
            raise AuthorizationError(text)
        if status == 404:
            raise missing(text)
        if status == 409:
            raise RegistryConflict(text)
        if status in (400, 413, 416, 422):
            raise ConfigError(text)
        if status >= 500:
            raise TransientError(text)
        raise BackendError(text)

    # -- reads -------------------------------------------------------------------------------

    def get_model(self, model_id: str, version: str | None = None) -> ModelInfo:
        check_name(model_id, what="model id")
        params = {} if version is None else {"version": check_name(version, what="version")}
        r = self._send("GET", f"/models/{model_id}", "get", params=params)
        self._raise_for(r, f"model {model_id}", missing=ModelNotFound)
        return _decode(ModelInfo, r, f"model {model_id}")

    def find_model(self, model_id: str, version: str) -> ModelInfo | None:
        """The model info of ``model_id`` at ``version``, or ``None`` when not registered."""
        try:
            return self.get_model(model_id, version)
        except ModelNotFound:
            return None

    def list_models(self) -> list[ModelInfo]:
        r = self._send("GET", "/models", "list")
        self._raise_for(r, "list models", missing=ModelNotFound)
        return _decode(ModelList, r, "list models").models

    def blob_status(self, model_id: str, version: str, path: str) -> BlobStatus | None:
        """``HEAD`` of a blob: its size and SHA-256 (from the strong ETag), or ``None``."""
        key = blob_key(model_id, version, path)
        r = self._send("HEAD", f"/blobs/{key}", "head")
        if r.status_code == 404:
            return None
        self._raise_for(r, f"blob {path}", missing=BlobNotFound)
        etag = r.headers.get("etag", "")
        sha = etag[1:-1] if len(etag) == 66 and etag[0] == etag[-1] == '"' else None
        length = r.headers.get("content-length", "")
        # unknown size (-1) never matches a local file, so a resumed publish re-uploads it
        return BlobStatus(size=int(length) if length.isdigit() else -1, sha256=sha)

    def download(self, model_id: str, version: str, path: str, dest: Path) -> None:
        """Stream a blob into ``dest`` (used by tests and tooling; the loader has its own)."""
        key = blob_key(model_id, version, path)
        with self._client.stream("GET", f"/blobs/{key}") as r:
            if r.status_code >= 400:
                body = read_body(
                    r,
                    limit=1 << 16,
                    deadline=Deadline(self._timeout),
                    what="registry",
                    truncate=True,
                )
                reply = Reply(r.status_code, r.headers, body, r.reason_phrase)
                self._raise_for(reply, f"blob {path}", missing=BlobNotFound)
            with open(dest, "wb") as fh:
                for chunk in r.iter_bytes(_CHUNK):
                    fh.write(chunk)

    # -- writes ------------------------------------------------------------------------------

    def upload_blob(
        self,
        model_id: str,
        version: str,
        path: str,
        source: Path,
        *,
        sha256: str,
        progress: Callable[[int], None] | None = None,
    ) -> BlobStatus:
        """Stream ``source`` to the registry as blob ``path`` of the model version."""
        key = blob_key(model_id, version, path)
        size = source.stat().st_size
        digest = base64.b64encode(bytes.fromhex(sha256)).decode("ascii")
        headers = {
            **self._auth(),
            "Content-Length": str(size),
            "Content-Digest": f"sha-256=:{digest}:",
            "Content-Type": "application/octet-stream",
        }
        sent = [0]

        def body() -> Iterator[bytes]:
            if sent[0] and progress is not None:
                progress(-sent[0])  # a retry starts over: undo the earlier progress
            sent[0] = 0
            fd = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
            try:
                while chunk := os.read(fd, _CHUNK):
                    sent[0] += len(chunk)
                    if progress is not None:
                        progress(len(chunk))
                    yield chunk
            finally:
                os.close(fd)

        r = self._send(
            "PUT",
            f"/blobs/{key}",
            f"upload of {path}",
            upload=True,
            content=body(),
            headers=headers,
        )
        self._raise_for(r, f"upload of {path}", missing=BlobNotFound)
        try:
            data: Any = decode_json(r.content)
        except WireError:
            data = None
        if not isinstance(data, dict) or data.get("sha256") != sha256 or data.get("size") != size:
            raise BackendError(f"upload of {path}: the registry stored different bytes")
        return BlobStatus(size=size, sha256=sha256)

    def register(
        self, model_id: str, version: str, registration: ModelRegistration
    ) -> tuple[ModelInfo, bool]:
        """Register the model version; returns its model info and whether it is new."""
        check_name(model_id, what="model id")
        check_name(version, what="version")
        body = registration.to_json()
        headers = {**self._auth(), "Content-Type": "application/json"}
        r = self._send(
            "PUT",
            f"/models/{model_id}/versions/{version}",
            "registration",
            content=body,
            headers=headers,
        )
        self._raise_for(r, f"registration of {model_id} {version}", missing=ModelNotFound)
        info = _decode(ModelInfo, r, f"registration of {model_id} {version}")
        return info, r.status_code == 201

    def delete_version(self, model_id: str, version: str) -> None:
        check_name(model_id, what="model id")
        check_name(version, what="version")
        r = self._send(
            "DELETE", f"/models/{model_id}/versions/{version}", "delete", headers=self._auth()
        )
        self._raise_for(r, f"delete of {model_id} {version}", missing=ModelNotFound)
