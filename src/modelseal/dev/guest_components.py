"""A loopback stand-in for CoCo guest-components' REST API (``modelseal dev guest-components``).

What a container in a Confidential Containers pod sees on ``127.0.0.1:8006``, with the
Rust ``api-server-rest``, Confidential Data Hub (CDH) and Attestation Agent (AA) replaced
by one Python process, so the loader's CoCo path (``--key-source cdh``, ``--tee aa``,
runtime measurement) runs on a machine without CoCo, in tests and in demos:

* the routes, query names, status codes, bodies and content types are api-server-rest's
  (``api-server-rest/src/router.rs`` and ``openapi/api.json`` of guest-components, as
  listed in docs/guides/coco.md);
* the AA part produces evidence with one attester of this build (mock-tdx by default,
  trusted by a KBS only with its test root), keeps the TD's runtime event log and extends
  its runtime register on ``POST /aa/aael``;
* the CDH part fetches ``/cdh/resource/<repo>/<type>/<tag>`` with a real RCAR exchange
  against the KBS (a fresh client per request, as the CDH builds one per call), attesting
  with the same TD, so a load recorded in the runtime measurements shows in later
  releases.

Failures answer as api-server-rest does: ``500`` with the outermost ttRPC error text
(``ttrpc request error``): the reason (denied, unknown resource, KBS down) goes to this
server's log only, as it goes to the CDH's log in a pod.

It is a development tool: it listens on loopback only and refuses other peers with
``403 Forbidden`` like the real server; the attester is whatever it is given.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import threading
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import parse_qsl

from modelseal import __version__
from modelseal._internal.bounded import load_toml
from modelseal._internal.encoding import b64url_decode
from modelseal.errors import ConfigError, Error, FormatError
from modelseal.loader.kbs_client import KbsClient
from modelseal.protocol.kbs import resource_path
from modelseal.tee.base import Attester
from modelseal.tee.initdata import parse_init_data

log = logging.getLogger("modelseal.dev.guest_components")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

#: ``--features`` of api-server-rest: which daemons the server fronts
FEATURES: Final = ("resource", "attestation", "all")
#: the one ``token_type`` the AA serves here (its KBS token; CoCo-AS tokens are not modelled)
KBS_TOKEN: Final = "kbs"  # noqa: S105 - a token type name, not a secret
#: largest ``POST /aa/aael`` body read (the real server reads any size; an event is a line)
MAX_AAEL_BODY: Final = 64 << 10

# api-server-rest's fixed answers (router.rs)
_OCTETS: Final = "application/octet-stream"
_JSON: Final = "application/json"
_TTRPC_FAILED: Final = b"ttrpc request error"
_AAEL_RESULTS: Final = {
    "ok": b'{"success":"true"}',
    "not_supported": (
        b'{"success":"false","message": "The platform does not support runtime measurement"}'
    ),
    "not_enabled": (
        b'{"success":"false","message": "Attestation Agent does not enable eventlog recording"}'
    ),
}


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    content_type: str | None = None


_BAD_REQUEST = Reply(400, b"BAD REQUEST")
_FORBIDDEN = Reply(403, b"Forbidden")
_NOT_FOUND = Reply(404, b"URL NOT FOUND")
_NOT_ALLOWED = Reply(405, b"Method Not Allowed")


def split_nth_slash(url: str, n: int) -> tuple[str, str] | None:
    """api-server-rest's ``split_nth_slash``: split before the ``n``-th ``/`` (1-based)."""
    positions = [i for i, c in enumerate(url) if c == "/"]
    if n < 1 or len(positions) < n:
        return None
    at = positions[n - 1]
    return url[:at], url[at:]


def decode_runtime_data(value: str, encoding: str | None) -> bytes:
    """api-server-rest's ``decode_runtime_data``: the query text's UTF-8 bytes, or with
    ``encoding=base64`` its URL-safe base64 (no padding) decoding; FormatError otherwise."""
    if encoding is None:
        return value.encode("utf-8")
    if encoding == "base64":
        if "=" in value:
            raise FormatError("runtime_data: URL-safe base64 without padding expected")
        return b64url_decode(value, what="runtime_data")
    raise FormatError(f"unsupported runtime_data encoding: {encoding[:32]}")


class GuestComponents:
    """The TD behind the API: one attester, the KBS the CDH talks to, and the AA's state.

    ``tee`` is the kind RCAR names (what ``/info`` reports). ``init_data`` is the TOML
    document the TD was launched with; the CDH sends it with its evidence. ``eventlog``
    False models an AA started without ``enable_eventlog``.
    """

    def __init__(
        self,
        attester: Attester,
        *,
        tee: str,
        kbs_url: str | None,
        features: str = "all",
        init_data: str | None = None,
        kbs_ca: str | None = None,
        eventlog: bool = True,
        timeout: float = 30.0,
    ) -> None:
        if features not in FEATURES:
            raise ConfigError(f"features must be one of {', '.join(FEATURES)}")
        if features != "attestation" and not kbs_url:
            raise ConfigError("the CDH needs the KBS URL (--kbs-url, or cdh.toml in init-data)")
        self.attester = attester
        self.tee = tee
        self.kbs_url = kbs_url
        self.features = features
        self.init_data = init_data
        self.kbs_ca = kbs_ca
        self.eventlog = eventlog
        self.timeout = timeout
        # the TD's runtime register and its log change together, one extension at a time
        self._lock = threading.Lock()

    @property
    def attestation(self) -> bool:
        return self.features in ("attestation", "all")

    @property
    def resource_feature(self) -> bool:
        return self.features in ("resource", "all")

    def _kbs(self) -> KbsClient:
        assert self.kbs_url is not None
        return KbsClient(
            self.kbs_url,
            self.attester,
            tee=self.tee,
            verify=self.kbs_ca or True,
            init_data=self.init_data,
            timeout=self.timeout,
        )

    # --- the daemons' work (blocking: run in a worker thread) --------------------------

    def info(self) -> bytes:
        doc: dict[str, Any] = {"version": f"modelseal-{__version__}"}
        if self.attestation:
            doc["tee"] = self.tee
        doc["feature"] = self.features
        return json.dumps(doc, separators=(",", ":")).encode()

    def evidence(self, runtime_data: bytes) -> bytes:
        with self._lock:
            value = self.attester.evidence(runtime_data)
        # serde_json's Value::to_string: compact, object keys in sorted order
        return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()

    def resource(self, path: str) -> bytes:
        with self._kbs() as client:
            secret = client.get_resource(resource_path("kbs://" + path))
        try:
            return bytes(secret.reveal())
        finally:
            secret.wipe()

    def token(self, token_type: str) -> bytes:
        if token_type != KBS_TOKEN or not self.kbs_url:
            raise ConfigError(f"token type {token_type[:32]!r} is not configured")
        with self._kbs() as client:
            token, pem = client.attest()
        try:
            return json.dumps(
                {"token": token, "tee_keypair": pem.reveal().decode("ascii")},
                separators=(",", ":"),
            ).encode()
        finally:
            pem.wipe()

    def extend(self, domain: str, operation: str, content: str) -> bytes:
        if not self.eventlog:
            return _AAEL_RESULTS["not_enabled"]
        extend = getattr(self.attester, "extend_runtime_measurement", None)
        if not callable(extend):
            return _AAEL_RESULTS["not_supported"]
        with self._lock:
            extend(domain, operation, content)
        log.info("runtime measurement extended: %s %s %s", domain, operation, content[:200])
        return _AAEL_RESULTS["ok"]


async def _work(fn: Callable[..., bytes], *args: Any) -> bytes | Exception:
    """Run a daemon call in a thread; its failure is a value (the route answers 500)."""
    try:
        return await asyncio.to_thread(fn, *args)
    except Error as exc:
        log.warning("%s failed: %s", getattr(fn, "__name__", "call"), exc.diagnostics())
        return exc
    except Exception as exc:  # a daemon's unexpected failure is still only a 500 here
        log.exception("%s failed", getattr(fn, "__name__", "call"))
        return exc


def _loopback(client: Any) -> bool:
    try:
        return bool(client) and ipaddress.ip_address(client[0]).is_loopback
    except ValueError:
        return False


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The request body, or None when it is longer than ``limit``."""
    body = bytearray()
    while True:
        message = await receive()
        body += message.get("body", b"")
        if len(body) > limit:
            return None
        if not message.get("more_body"):
            return bytes(body)


class ApiServer:
    """The ASGI app: api-server-rest's router over a :class:`GuestComponents`."""

    def __init__(self, guest: GuestComponents) -> None:
        self.guest = guest

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        reply = await self.route(scope, receive)
        headers = [(b"content-length", str(len(reply.body)).encode())]
        if reply.content_type is not None:
            headers.insert(0, (b"content-type", reply.content_type.encode()))
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        await send({"type": "http.response.body", "body": reply.body})

    async def route(self, scope: Scope, receive: Receive) -> Reply:
        if not _loopback(scope.get("client")):
            return _FORBIDDEN
        # the path as received (router.rs reads uri().path(): no percent-decoding)
        path = bytes(scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
        path = path.split("?", 1)[0]
        method = scope["method"]
        # form_urlencoded::parse keeps empty values and a key without "=" (value "")
        raw_query = scope.get("query_string", b"").decode("utf-8", "replace")
        query = dict(parse_qsl(raw_query, keep_blank_values=True))
        guest = self.guest
        if path == "/info":
            if method != "GET":
                return _NOT_ALLOWED
            return Reply(200, guest.info(), _JSON)
        split = split_nth_slash(path, 2)
        if split is None:
            return _NOT_FOUND
        root, rest = split
        if root == "/aa":
            if not guest.attestation:
                return Reply(404, b"Attestation Feature Not Enabled")
            return await self._aa(rest, method, query, receive)
        if root == "/cdh":
            if not guest.resource_feature:
                return Reply(404, b"Resource Feature Not Enabled")
            parts = split_nth_slash(rest, 2)
            if parts is None or parts[0] != "/resource":
                return _NOT_FOUND
            # any method: router.rs does not look at it for the CDH
            return self._answer(await _work(guest.resource, parts[1]))
        return _NOT_FOUND

    async def _aa(self, rest: str, method: str, query: dict[str, str], receive: Receive) -> Reply:
        guest = self.guest
        if rest == "/token" and method == "GET":
            token_type = query.get("token_type")
            if token_type is None:
                return _BAD_REQUEST
            return self._answer(await _work(guest.token, token_type))
        if rest in ("/evidence", "/additional-evidence") and method == "GET":
            runtime_data = query.get("runtime_data")
            if runtime_data is None:
                return _BAD_REQUEST
            try:
                data = decode_runtime_data(runtime_data, query.get("encoding"))
            except FormatError:
                return _BAD_REQUEST
            if rest == "/additional-evidence":
                return Reply(200, b"", _OCTETS)  # no additional attesters: an empty body
            return self._answer(await _work(guest.evidence, data))
        if rest == "/aael" and method == "POST":
            body = await _read_body(receive, MAX_AAEL_BODY)
            event = _aael_event(body)
            if isinstance(event, str):
                return Reply(500, f"Illegal AAEL eventry format: {event}".encode())
            result = await _work(guest.extend, *event)
            if isinstance(result, Exception):
                return Reply(500, _TTRPC_FAILED)
            return Reply(200, result, _JSON)
        return _NOT_FOUND

    @staticmethod
    def _answer(result: bytes | Exception) -> Reply:
        if isinstance(result, Exception):
            return Reply(500, _TTRPC_FAILED)
        return Reply(200, result, _OCTETS)


def _aael_event(body: bytes | None) -> tuple[str, str, str] | str:
    """``(domain, operation, content)`` of an ``AaelEvent`` body, or why it is not one."""
    if body is None:
        return f"body longer than {MAX_AAEL_BODY} bytes"
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as exc:
        return f"invalid JSON ({type(exc).__name__})"
    if not isinstance(doc, dict):
        return "expected a JSON object"
    domain, operation, content = doc.get("domain"), doc.get("operation"), doc.get("content")
    if not isinstance(domain, str) or not isinstance(operation, str):
        return "missing or non-string field `domain` or `operation`"
    if not isinstance(content, str):
        return "missing or non-string field `content`"
    return domain, operation, content


def kbs_url_from_init_data(text: str) -> str | None:
    """The KBS URL a CoCo pod's init-data gives the CDH: ``[data]."cdh.toml"`` →
    ``[kbc] url`` (as CoCo's init-data carries the CDH configuration), or None."""
    cdh = parse_init_data(text).data.get("cdh.toml")
    if cdh is None:
        return None
    doc = load_toml(cdh, what="init-data cdh.toml", max_bytes=64 << 10, max_depth=8)
    kbc = doc.get("kbc")
    url = kbc.get("url") if isinstance(kbc, dict) else None
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ConfigError("init-data cdh.toml: [kbc] url must be an http(s) URL")
    return url


def serve(guest: GuestComponents, *, host: str, port: int, log_level: str = "warning") -> None:
    """Serve the API on a loopback address until interrupted."""
    import uvicorn

    try:
        if not ipaddress.ip_address(host).is_loopback:
            raise ConfigError(
                "guest-components' API is for the pod itself: bind a loopback address"
            )
    except ValueError:
        if host != "localhost":
            raise ConfigError(f"not an IP address: {host!r}") from None
    uvicorn.run(
        ApiServer(guest),
        host=host,
        port=port,
        log_level=log_level,
        server_header=False,
        lifespan="off",
    )
