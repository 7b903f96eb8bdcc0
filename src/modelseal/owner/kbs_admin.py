"""Owner-side client of the KBS admin API (``/modelseal/v1``), used by the CLI and publish.

``KbsAdminClient(url, token, verify=True | "ca.pem")`` registers keys, sets policies and
reads the audit log. HTTP failures become typed errors: 401 ``TokenError``, 403
``AuthorizationError``, 404 ``KeyNotFound``, 400/409 ``ConfigError``, 5xx and connection
failures ``TransientError``. Key bytes are sent once (over TLS in production) and never
logged. Answers are read with a byte cap (:data:`MAX_BODY_BYTES`, ``FormatError``) and an
overall deadline of ``timeout`` seconds (``TransientError``), never buffered unbounded.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterator, Mapping
from types import TracebackType
from typing import Any, Final, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from modelseal._internal.bounded_http import IDENTITY, Reply, send
from modelseal._internal.encoding import b64url_encode
from modelseal.crypto.secret import SecretBytes
from modelseal.errors import (
    AuthorizationError,
    BackendError,
    ConfigError,
    KeyNotFound,
    TokenError,
    TransientError,
)
from modelseal.keystore.paths import normalize_key_id
from modelseal.policy.document import ReleasePolicy, parse_policy
from modelseal.protocol.admin import (
    API_PREFIX,
    AuditEntryModel,
    AuditPage,
    AuditVerifyResponse,
    KeyInfo,
    KeyList,
    ModelList,
    PolicyInfo,
    RotateResponse,
)
from modelseal.protocol.wire import WireError, decode_json

__all__ = ["KbsAdminClient", "KeyConflictError"]

M = TypeVar("M", bound=BaseModel)
#: largest admin answer read (an audit page of 1000 rows is well under 1 MiB)
MAX_BODY_BYTES: Final = 16 << 20


class KeyConflictError(ConfigError):
    """The KBS refused to overwrite an existing key (HTTP 409)."""


def _verify_arg(verify: bool | str) -> bool | ssl.SSLContext:
    if isinstance(verify, bool):
        return verify
    try:
        return ssl.create_default_context(cafile=verify)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load CA bundle {verify}: {exc}") from None


def _segments(key_id: str) -> str:
    """The key id as URL path segments (``kbs:///`` and UUID ids normalized to
    ``repo/type/tag``); the grammar needs no escaping (checked here)."""
    return normalize_key_id(key_id)


class KbsAdminClient:
    """Synchronous admin client; use as a context manager or call :meth:`close`."""

    def __init__(
        self,
        url: str,
        token: str,
        *,
        verify: bool | str = True,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not token.strip() or any(c.isspace() for c in token.strip()):
            raise ConfigError("an admin token is required (modelseal kbs token --data-dir DIR)")
        base = url.rstrip("/")
        if not base.startswith(("http://", "https://")):
            raise ConfigError(f"KBS URL must start with http:// or https://, not {url!r}")
        self.url = base
        self._timeout = timeout
        self._client = httpx.Client(
            base_url=base + API_PREFIX,
            headers={
                "Authorization": f"Bearer {token.strip()}",
                "Accept": "application/json",
                **IDENTITY,
            },
            verify=_verify_arg(verify),
            timeout=timeout,
            transport=transport,
        )

    def __enter__(self) -> KbsAdminClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    # --- transport ---------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: Mapping[str, str | int] | None = None,
        ok: tuple[int, ...] = (200,),
    ) -> Reply:
        content = None if json_body is None else json.dumps(json_body).encode()
        headers = {"Content-Type": "application/json"} if content is not None else None
        try:
            response = send(
                self._client,
                method,
                path,
                limit=MAX_BODY_BYTES,
                seconds=self._timeout,
                what=f"KBS {self.url}",
                content=content,
                headers=headers,
                params=params,
            )
        except httpx.TransportError as exc:
            raise TransientError(f"KBS {self.url} unreachable: {type(exc).__name__}") from exc
        if response.status_code in ok:
            return response
        detail = _detail(response)
        status = response.status_code
        if status == 401:
            raise TokenError(f"KBS rejected the admin token: {detail}")
        if status == 403:
            raise AuthorizationError(f"KBS refused: {detail}")
        if status == 404:
            raise KeyNotFound(f"KBS: {detail}")
        if status == 409:
            raise KeyConflictError(f"KBS: {detail}")
        if 400 <= status < 500:
            raise ConfigError(f"KBS rejected the request ({status}): {detail}")
        if status in (502, 503, 504):
            raise TransientError(f"KBS unavailable ({status}): {detail}")
        raise BackendError(f"KBS error ({status}): {detail}")

    def _model(self, model: type[M], response: Reply) -> M:
        try:
            return model.model_validate_json(response.content)
        except ValidationError:
            raise BackendError(f"KBS sent an unexpected {model.__name__} response") from None

    # --- keys --------------------------------------------------------------------------

    def put_key(
        self,
        key_id: str,
        dek: SecretBytes | None,
        policy: Mapping[str, Any] | ReleasePolicy | None = None,
        model_digest: str | None = None,
    ) -> KeyInfo:
        """Import ``dek`` (None = the KBS generates one) with an optional policy and digest.

        Re-putting identical bytes is idempotent; anything else for an existing id raises
        :class:`KeyConflictError`.
        """
        body: dict[str, Any] = {}
        if dek is None:
            body["generate"] = True
        else:
            body["key"] = b64url_encode(dek.reveal())
        if policy is not None:
            body["policy"] = _policy_doc(policy)
        if model_digest is not None:
            body["model_digest"] = model_digest
        try:
            response = self._request(
                "PUT", f"/keys/{_segments(key_id)}", json_body=body, ok=(200, 201)
            )
        finally:
            body.pop("key", None)
        return self._model(KeyInfo, response)

    def get_key(self, key_id: str) -> KeyInfo:
        return self._model(KeyInfo, self._request("GET", f"/keys/{_segments(key_id)}"))

    def list_keys(self, *, model_digest: str | None = None) -> list[KeyInfo]:
        params = {"model_digest": model_digest} if model_digest else None
        return self._model(KeyList, self._request("GET", "/keys", params=params)).keys

    def revoke_key(self, key_id: str) -> KeyInfo:
        return self._model(KeyInfo, self._request("POST", f"/keys/{_segments(key_id)}/revoke"))

    def delete_key(self, key_id: str) -> KeyInfo:
        return self._model(KeyInfo, self._request("DELETE", f"/keys/{_segments(key_id)}"))

    def rotate_kek(self) -> RotateResponse:
        return self._model(RotateResponse, self._request("POST", "/kek/rotate"))

    # --- policies and models -----------------------------------------------------------

    def set_policy(self, key_id: str, policy_doc: Mapping[str, Any] | ReleasePolicy) -> PolicyInfo:
        """Replace the key's release policy (validated locally first, then by the KBS)."""
        response = self._request(
            "PUT", f"/keys/{_segments(key_id)}/policy", json_body=_policy_doc(policy_doc)
        )
        return self._model(PolicyInfo, response)

    def get_policy(self, key_id: str) -> PolicyInfo:
        return self._model(PolicyInfo, self._request("GET", f"/keys/{_segments(key_id)}/policy"))

    def bind_model(self, key_id: str, model_digest: str | None) -> KeyInfo:
        response = self._request(
            "PUT", f"/keys/{_segments(key_id)}/model", json_body={"model_digest": model_digest}
        )
        return self._model(KeyInfo, response)

    def list_models(self, *, digest: str | None = None) -> ModelList:
        params = {"digest": digest} if digest else None
        return self._model(ModelList, self._request("GET", "/models", params=params))

    # --- audit -------------------------------------------------------------------------

    def audit(self, *, after: int = 0, limit: int = 100) -> AuditPage:
        """One page of audit rows with ``seq > after``."""
        response = self._request("GET", "/audit", params={"after": after, "limit": limit})
        return self._model(AuditPage, response)

    def iter_audit(self, *, after: int = 0, page: int = 1000) -> Iterator[AuditEntryModel]:
        """Every audit row after ``after``, page by page."""
        while True:
            result = self.audit(after=after, limit=page)
            yield from result.entries
            if result.next_after is None:
                return
            if result.next_after <= after:
                # A KBS that does not advance would otherwise keep us paging forever.
                raise BackendError("KBS audit paging did not advance")
            after = result.next_after

    def audit_verify(self) -> AuditVerifyResponse:
        """The KBS's own verification (chain + KEK-MACed head)."""
        return self._model(AuditVerifyResponse, self._request("GET", "/audit/verify"))

    def whoami(self) -> dict[str, Any]:
        try:
            value = decode_json(self._request("GET", "/whoami").content)
        except WireError:
            raise BackendError("KBS sent an unexpected whoami response") from None
        return value if isinstance(value, dict) else {}


def _policy_doc(policy: Mapping[str, Any] | ReleasePolicy) -> dict[str, Any]:
    parsed = parse_policy(policy if isinstance(policy, ReleasePolicy) else dict(policy))
    return parsed.to_document()


def _detail(response: Reply) -> str:
    try:
        value = decode_json(response.content)
    except WireError:
        return response.reason_phrase or "error"
    if isinstance(value, dict) and isinstance(value.get("detail"), str):
        return str(value["detail"])[:500]
    return response.reason_phrase or "error"
