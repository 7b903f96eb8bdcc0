"""Client of guest-components' REST API server (``api-server-rest``), the CoCo guest's door.

The server (Rust, guest-components ``api-server-rest/src/router.rs``) answers on
``127.0.0.1:8006``:

* ``GET /info`` → ``200`` JSON ``{"version", "tee"?, "additional_tees"?, "feature"}``;
* ``GET /aa/evidence?runtime_data=<b64url, no padding>&encoding=base64`` → ``200`` the
  Attestation Agent's evidence for those report-data bytes (JSON text, served as
  ``application/octet-stream``);
* ``POST /aa/aael`` ``{"domain", "operation", "content"}`` → ``200`` JSON
  ``{"success":"true"}`` or ``{"success":"false","message": "<why>"}`` (the AA's
  ``ExtendRuntimeMeasurement``);
* ``GET /cdh/resource/<repo>/<type>/<tag>`` → ``200`` the resource's raw bytes, which the
  Confidential Data Hub fetched from its KBS.

Its errors are plain text: ``400 BAD REQUEST``, ``403 Forbidden`` (caller not on
loopback), ``404 URL NOT FOUND`` / ``Attestation Feature Not Enabled`` / ``Resource
Feature Not Enabled``, and ``500`` with the outermost message of the failed ttRPC call
to the AA or CDH: ``ttrpc connect to <CDH|Attestation Agent> addr: ... failed`` while
that daemon is not up, else ``ttrpc request error`` whatever the cause (a KBS denial, an
unknown resource, an unreachable KBS: the CDH's log says which, the answer does not).

The server is a peer like any other: every answer is read within a byte cap and a
deadline (:func:`modelseal._internal.bounded_http.send`), and its text only ever reaches
messages cut to one printable line.
"""

from __future__ import annotations

from typing import Any, Final

import httpx

from modelseal._internal.bounded import load_json
from modelseal._internal.bounded_http import Reply, send
from modelseal._internal.encoding import b64url_encode
from modelseal._internal.urls import display_url
from modelseal.crypto.secret import SecretBytes
from modelseal.errors import (
    AttestationError,
    BackendError,
    ConfigError,
    Error,
    FormatError,
    PolicyDenied,
    TransientError,
)
from modelseal.protocol.kbs import resource_path

__all__ = [
    "MAX_EVIDENCE_BYTES",
    "MAX_RESOURCE_BYTES",
    "ApiServerClient",
    "MeasurementResult",
]

#: Largest evidence document read from the AA (a TD quote plus a CCEL of a few MiB).
MAX_EVIDENCE_BYTES: Final = 4 << 20
#: Largest resource read from the CDH (a model key is 32 bytes; a TLS identity a few KiB).
MAX_RESOURCE_BYTES: Final = 1 << 20
#: Small JSON answers (``/info``, ``/aa/aael``).
MAX_SMALL_BYTES: Final = 64 << 10
#: The 500 body of api-server-rest while the AA or CDH daemon is not (yet) reachable.
_CONNECT_FAILED = "ttrpc connect to "


def _line(data: bytes) -> str:
    """A peer's text cut to one printable line of at most 200 characters."""
    text = data[:200].decode("utf-8", "replace")
    return "".join(c if c.isprintable() else "?" for c in text)


class MeasurementResult:
    """What ``POST /aa/aael`` answered: recorded, or why not (the AA's own message)."""

    __slots__ = ("message", "recorded")

    def __init__(self, recorded: bool, message: str) -> None:
        self.recorded = recorded
        self.message = message


class ApiServerClient:
    """One api-server-rest base URL, bounded reads, errors mapped to ``modelseal.errors``.

    ``timeout`` bounds each whole exchange (connect, headers and body). Failures map to:
    unreachable or a daemon behind the server still starting → :class:`TransientError`
    (exit 75, retried by the caller); a feature the server was started without, a
    non-loopback caller or a malformed request → :class:`ConfigError` (exit 2); a failed
    resource fetch → :class:`PolicyDenied` (exit 4: the CDH does not say why); failed
    evidence → :class:`AttestationError` (exit 4).
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"guest-components API URL must be http(s)://...: {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._http = httpx.Client(
            timeout=timeout, follow_redirects=False, trust_env=False, transport=transport
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ApiServerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- transport --------------------------------------------------------------------

    def _call(self, method: str, path: str, what: str, limit: int, **options: Any) -> Reply:
        url = self.base_url + path
        try:
            reply = send(
                self._http, method, url, limit=limit, seconds=self.timeout, what=what, **options
            )
        except httpx.HTTPError as exc:
            raise TransientError(
                f"{what}: guest-components API unreachable at {display_url(self.base_url)} "
                f"({type(exc).__name__})"
            ) from exc
        return reply

    def _failure(self, reply: Reply, what: str, on_500: type[Error]) -> Error:
        status, text = reply.status_code, _line(reply.content)
        where = display_url(self.base_url)
        if status == 404:
            return ConfigError(
                f"{what}: {where} answered 404 ({text!r}); is it guest-components' "
                "api-server-rest, started with this feature (--features resource, "
                "attestation or all)?"
            )
        if status == 403:
            return ConfigError(f"{what}: {where} refuses callers that are not on loopback")
        if status in (400, 405):
            return ConfigError(f"{what}: {where} rejected the request (HTTP {status}: {text!r})")
        if status == 500 and text.startswith(_CONNECT_FAILED):
            return TransientError(f"{what}: the daemon behind {where} is not reachable yet")
        if status == 500:
            return on_500(f"{what} failed at {where} ({text!r})")
        if status >= 500:
            return TransientError(f"{what}: {where} answered HTTP {status}")
        return BackendError(f"{what}: {where} answered HTTP {status}")

    # --- endpoints --------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """``GET /info``: ``version``, ``feature``, and ``tee`` when attestation is enabled."""
        what = "guest-components /info"
        reply = self._call("GET", "/info", what, MAX_SMALL_BYTES)
        if reply.status_code != 200:
            raise self._failure(reply, what, BackendError)
        doc = load_json(reply.content, what=what, max_bytes=MAX_SMALL_BYTES, max_depth=4)
        if not isinstance(doc, dict):
            raise FormatError(f"{what}: not a JSON object")
        return doc

    def evidence(self, report_data: bytes) -> Any:
        """The AA's evidence over ``report_data`` (raw bytes, sent URL-safe base64)."""
        what = "Attestation Agent evidence"
        params = {"runtime_data": b64url_encode(report_data), "encoding": "base64"}
        reply = self._call("GET", "/aa/evidence", what, MAX_EVIDENCE_BYTES, params=params)
        if reply.status_code != 200:
            raise self._failure(reply, what, AttestationError)
        return load_json(reply.content, what=what, max_bytes=MAX_EVIDENCE_BYTES)

    def resource(self, key_id: str) -> SecretBytes:
        """``GET /cdh/resource/<repo>/<type>/<tag>``: the raw bytes the CDH fetched.

        ``key_id`` may be ``repo/type/tag``, ``kbs:///repo/type/tag`` or a UUID.
        """
        path = resource_path(key_id)
        what = f"CDH resource {path}"
        reply = self._call("GET", "/cdh/resource/" + path, what, MAX_RESOURCE_BYTES)
        if reply.status_code != 200:
            raise self._failure(reply, what, PolicyDenied)
        if not reply.content:
            raise FormatError(f"{what}: the CDH returned an empty resource")
        return SecretBytes(reply.content)

    def extend_runtime_measurement(
        self, domain: str, operation: str, content: str
    ) -> MeasurementResult:
        """``POST /aa/aael``: record an event in the AA event log and extend the runtime
        measurement register with its digest (RTMR3 on TDX)."""
        what = "Attestation Agent runtime measurement"
        body = {"domain": domain, "operation": operation, "content": content}
        reply = self._call("POST", "/aa/aael", what, MAX_SMALL_BYTES, json=body)
        if reply.status_code != 200:
            raise self._failure(reply, what, BackendError)
        doc = load_json(reply.content, what=what, max_bytes=MAX_SMALL_BYTES, max_depth=4)
        if not isinstance(doc, dict) or doc.get("success") not in ("true", "false"):
            raise FormatError(f'{what}: expected {{"success": "true"|"false", ...}}')
        message = doc.get("message")
        return MeasurementResult(
            doc["success"] == "true", _line(message.encode()) if isinstance(message, str) else ""
        )
