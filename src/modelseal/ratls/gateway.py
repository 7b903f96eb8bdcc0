"""``modelseal gateway``: attested TLS in front of an unchanged inference server.

Runs in the TEE next to the inference server. Each client connection is a thread: TLS 1.3
with the attested certificate (:mod:`modelseal.ratls.identity`), HTTP/1.1 parsed by h11,
each request forwarded to the upstream (:mod:`modelseal.ratls.upstream`) and the response
relayed as it arrives, in pieces as large as what has arrived (server-sent events, chunked
bodies and 100 MB downloads alike pass through in constant memory, without waiting).
``GET /.well-known/modelseal-attestation?nonce=...`` is answered by the gateway itself
with fresh evidence bound to the nonce and this TLS connection. Bounds: a connection
limit, a request-head size limit, timeouts on the handshake, on idle keep-alive
connections and on every read and write.

With ``GatewaySettings.metrics`` it serves Prometheus metrics on a port of its own:
connections by outcome, requests by route and status class, fresh-evidence answers and
certificate renewals (:mod:`modelseal._internal.metrics`). The relay records a constant
number of values per request and connection, never per piece of a body.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import socketserver
import threading
import time
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import h11
from OpenSSL import SSL

from modelseal._internal import metrics
from modelseal._internal.encoding import b64url_decode
from modelseal._internal.metrics import MetricsEndpoint, MetricsServer, SnapshotCollector
from modelseal.errors import BackendError, ConfigError, FormatError
from modelseal.ratls.identity import AttestedIdentity, models_from_receipts
from modelseal.ratls.tls import READ_SIZE, TlsStream
from modelseal.ratls.upstream import Response, UpstreamPool
from modelseal.ratls.wire import FRESH_CONTENT_TYPE, FRESH_PATH, MAX_NONCE, MIN_NONCE
from modelseal.tee import registry

log = logging.getLogger(__name__)

#: Headers that describe one hop, never forwarded (RFC 9110 section 7.6.1).
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"host",
    }
)
#: What the gateway itself tells the upstream about the client; a client's own claims
#: (which a server may read before the gateway's) are never forwarded.
FORWARDING = frozenset({b"forwarded", b"x-forwarded-for", b"x-forwarded-proto"})
#: Request headers dropped (h11 lowercases header names).
NOT_FORWARDED = HOP_BY_HOP | FORWARDING
MAX_HEAD_BYTES = 64 * 1024
#: Idle keep-alive connections to the upstream kept for reuse.
MAX_IDLE_UPSTREAM = 32
#: ``route`` label of forwarded requests (a 502 for an unreachable upstream included); the
#: gateway's own fresh-evidence requests are :data:`FRESH_PATH`, and requests it refuses
#: before routing (a target not in origin form, CONNECT) are ``rejected``
ROUTE_UPSTREAM = "upstream"
ROUTE_REJECTED = "rejected"
#: a request's method as its label value: standard methods only (clients choose methods)
_METHOD_LABELS = {m.encode(): m for m in metrics.HTTP_METHODS}


@dataclass(frozen=True)
class GatewaySettings:
    """Where to listen, where to forward, and the bounds."""

    host: str
    port: int
    upstream: str
    max_connections: int = 256
    handshake_timeout: float = 10.0
    idle_timeout: float = 60.0
    io_timeout: float = 300.0
    #: fresh-evidence requests served at once (each asks the TEE for a quote)
    max_fresh: int = 4
    #: serve Prometheus metrics here while the gateway serves
    metrics: MetricsEndpoint | None = None

    def validated(self) -> GatewaySettings:
        parts = urllib.parse.urlsplit(self.upstream)
        if parts.scheme != "http" or not parts.hostname:
            raise ConfigError("--upstream must be an http:// URL of the local inference server")
        if parts.path not in ("", "/") or parts.query:
            raise ConfigError("--upstream takes scheme, host and port only")
        if not _loopback(parts.hostname):
            # plain HTTP leaves the TEE's memory only on loopback; anywhere else the
            # prompts the gateway decrypted would cross a network in the clear
            raise ConfigError("--upstream must be on loopback (127.0.0.1, ::1 or localhost)")
        if not 1 <= self.max_connections <= 10_000:
            raise ConfigError("max connections must be 1..10000")
        return self


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


class Gateway:
    """The attested reverse proxy; :meth:`serve_forever` blocks, :meth:`shutdown` stops."""

    def __init__(self, settings: GatewaySettings, identity: AttestedIdentity) -> None:
        self.settings = settings.validated()
        self.identity = identity
        parts = urllib.parse.urlsplit(self.settings.upstream)
        assert parts.hostname is not None  # validated
        self.upstream = UpstreamPool(
            parts.hostname,
            parts.port or 80,
            connect_timeout=10.0,
            io_timeout=settings.io_timeout,
            max_idle=min(settings.max_connections, MAX_IDLE_UPSTREAM),
        )
        self.upstream_host = parts.netloc.encode("ascii")
        self._slots = threading.BoundedSemaphore(settings.max_connections)
        self._fresh = threading.BoundedSemaphore(settings.max_fresh)
        self._stop = threading.Event()
        #: connections holding a slot now (changed once per connection, under the lock)
        self._open = 0
        self._open_lock = threading.Lock()
        # every child resolved once (labels() takes a lock), and shown at 0 from the start
        self._outcomes = {
            r: metrics.GATEWAY_CONNECTIONS.labels(r) for r in metrics.GATEWAY_CONNECTION_RESULTS
        }
        self.relayed = {
            d: metrics.GATEWAY_RELAYED_BYTES.labels(d) for d in metrics.GATEWAY_DIRECTIONS
        }
        self.fresh_results = {
            r: metrics.GATEWAY_FRESH_EVIDENCE.labels(r) for r in metrics.GATEWAY_FRESH_RESULTS
        }
        #: bounded by the constant routes, methods and the three-digit status codes h11
        #: accepts
        self._request_series = metrics.RequestSeries("gateway")
        gateway = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                gateway._connection(self.request, self.client_address)

        self.server = _Server((settings.host, settings.port), Handler, bind_and_activate=True)
        self.port: int = self.server.server_address[1]
        self.exporter: MetricsServer | None = None
        if settings.metrics is not None:
            collector = SnapshotCollector(self.gauges, {}, metrics.GATEWAY_GAUGES)
            try:
                self.exporter = MetricsServer(settings.metrics, collectors=[collector])
            except BaseException:
                self.server.server_close()
                raise
        self._refresher = threading.Thread(target=self._refresh_loop, daemon=True)

    @property
    def metrics_url(self) -> str | None:
        """``http://HOST:PORT/metrics`` when metrics are served (the port may have been
        chosen by the kernel), else None."""
        return self.exporter.url if self.exporter is not None else None

    def gauges(self) -> dict[str, float]:
        """The values of :data:`~modelseal._internal.metrics.GATEWAY_GAUGES`, read at
        each scrape."""
        issued = self.identity.issued
        return {
            "open_connections": self._open,
            "connection_limit": self.settings.max_connections,
            "certificate_expiry": issued.expires,
            "certificate_renewal": self.identity.next_refresh(),
        }

    def serve_forever(self) -> None:
        self._refresher.start()
        try:
            self.server.serve_forever(poll_interval=0.2)
        finally:
            self.server.server_close()
            self.upstream.close()
            if self.exporter is not None:
                self.exporter.close()

    def shutdown(self) -> None:
        self._stop.set()
        self.server.shutdown()

    def _refresh_loop(self) -> None:
        while not self._stop.wait(max(1.0, self.identity.next_refresh() - self.identity.clock())):
            try:
                self.identity.refresh()
            except Exception:
                # keep serving the current certificate; the next accept retries in time
                log.exception("renewing the attested certificate failed")

    # --- one connection ---------------------------------------------------------------

    def _connection(self, sock: socket.socket, peer: Any) -> None:
        if not self._slots.acquire(blocking=False):
            sock.close()
            self._outcomes["refused_limit"].inc()
            log.warning("connection limit reached; refused %s", peer[0])
            return
        with self._open_lock:
            self._open += 1
        stream: TlsStream | None = None
        result = "error"
        try:
            try:
                context = self.identity.current.context
            except Exception as exc:
                # the late renewal failed: no certificate to serve (the result stays error)
                log.warning("no attested certificate for %s: %s", peer[0], type(exc).__name__)
                return
            try:
                # small writes (a response head, an SSE event) must leave at once, not
                # wait for the peer's delayed ACK
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                stream = TlsStream.server(context, sock, self.settings.io_timeout)
                stream.handshake(self.settings.handshake_timeout)
            except (SSL.Error, OSError) as exc:  # TimeoutError is an OSError
                result = "handshake_failed"
                log.debug("TLS handshake with %s failed: %s", peer[0], type(exc).__name__)
                return
            exchange = _Exchange(self, stream, peer[0])
            exchange.run()
            result = "malformed" if exchange.malformed else "served"
        except TimeoutError as exc:
            result = "timed_out"
            log.debug("connection from %s ended: %s", peer[0], exc)
        except (SSL.Error, OSError, h11.ProtocolError) as exc:
            result = "aborted"
            log.debug("connection from %s ended: %s", peer[0], type(exc).__name__)
        except _NoEvidence as exc:
            # the TEE made no evidence for a fresh-evidence request: the client sees its
            # connection closed instead of an answer
            log.warning("no fresh evidence for %s: %s", peer[0], exc.__cause__ or exc)
        except (BackendError, FormatError) as exc:
            # the upstream broke off or garbled a response already under way: the client
            # sees its connection closed before the end of the body (the messages never
            # quote the response's bytes)
            result = "cut_off"
            log.warning("connection from %s: response cut off: %s", peer[0], exc)
        except Exception as exc:
            # no traceback: it could quote request bytes into the log
            log.warning("connection from %s failed: %s", peer[0], type(exc).__name__)
        finally:
            if stream is not None:
                stream.close()
            else:
                sock.close()
            with self._open_lock:
                self._open -= 1
            self._slots.release()
            self._outcomes[result].inc()

    def _observe(self, route: str, method: bytes, status: int, seconds: float) -> None:
        """One answered request into ``modelseal_http_request_duration_seconds``."""
        label = _METHOD_LABELS.get(method, metrics.OTHER_METHOD)
        self._request_series.observe(route, label, status, seconds)


class _NoEvidence(Exception):
    """The TEE made no fresh evidence (its cause says why): the connection ends as an
    error, not as an upstream that broke off."""


class _Exchange:
    """HTTP/1.1 requests on one TLS connection, one after another."""

    def __init__(self, gateway: Gateway, stream: TlsStream, peer: str) -> None:
        self.gateway = gateway
        self.stream = stream
        self.peer = peer
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        #: the method of the request being answered (an answer to HEAD has no body)
        self.method = b""
        #: the status of the response sent to it (0: none yet)
        self.status = 0
        #: the client sent a request head h11 could not parse (answered 400)
        self.malformed = False
        #: requests handled on this connection
        self.answered = 0

    def _next(self, deadline: float | None = None) -> Any:
        """The next h11 event; each read waits at most ``io_timeout``, and all reads
        together end by ``deadline`` (monotonic) when one is given."""
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return event
            if self.h11.they_are_waiting_for_100_continue:
                self._send(h11.InformationalResponse(status_code=100, headers=[]))
            timeout = None
            if deadline is not None:
                timeout = deadline - time.monotonic()
                if timeout <= 0:
                    raise TimeoutError("request head not received in time")
            self.h11.receive_data(self.stream.read(READ_SIZE, timeout))

    def _send(self, event: Any) -> None:
        data = self.h11.send(event)
        if data:
            self.stream.write(data)

    def _send_all(self, *events: Any) -> None:
        """Several events, the end of the message included, in one write."""
        data = b"".join(self.h11.send(e) or b"" for e in (*events, h11.EndOfMessage()))
        self.stream.write(data)

    def run(self) -> None:
        while True:
            try:
                # the whole head, idle keep-alive wait included, within idle_timeout: a
                # client trickling header bytes cannot hold a connection slot for long
                event = self._next(time.monotonic() + self.gateway.settings.idle_timeout)
            except h11.RemoteProtocolError as exc:
                self.malformed = True
                self._error(exc.error_status_hint, "malformed request")
                return
            except TimeoutError:
                if self.answered and not self.h11.trailing_data[0]:
                    # a kept-alive connection nobody reused: the usual end, not a stall
                    return
                raise
            if isinstance(event, h11.ConnectionClosed):
                return
            if not isinstance(event, h11.Request):
                return
            started = time.perf_counter()
            self.method = event.method
            self.status = 0
            route = self._request(event)
            self.answered += 1
            if self.status:  # answered in full: to the last byte of the response
                self.gateway._observe(
                    route, event.method, self.status, time.perf_counter() - started
                )
            if self.h11.our_state is h11.MUST_CLOSE or self.h11.their_state is not h11.DONE:
                return
            self.h11.start_next_cycle()

    def _error(self, status: int, text: str) -> None:
        if self.h11.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        body = (text + "\n").encode()
        headers = [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        response = h11.Response(status_code=status, headers=headers)
        self.status = status
        if self.method == b"HEAD":
            # the head alone: h11 refuses body bytes after a HEAD, and the refusal would
            # end the connection with no answer at all
            self._send_all(response)
            return
        self._send_all(response, h11.Data(data=body))

    def _request(self, request: h11.Request) -> str:
        """Answer one request; returns its ``route`` label."""
        # origin-form only: an absolute URL or authority would make this an open proxy
        if not request.target.startswith(b"/") or not request.target.isascii():
            self._error(400, "request target must be an absolute path")
            return ROUTE_REJECTED
        if request.method == b"CONNECT":
            # whatever its target, a 2xx to CONNECT makes the upstream connection a
            # tunnel: never to be pooled for the next request, and no gateway service
            self._error(400, "CONNECT is not forwarded")
            return ROUTE_REJECTED
        target = request.target.decode("ascii")
        path, _, query = target.partition("?")
        if path == FRESH_PATH:
            self._fresh(request, query)
            return FRESH_PATH
        self._forward(request)
        return ROUTE_UPSTREAM

    def _fresh(self, request: h11.Request, query: str) -> None:
        results = self.gateway.fresh_results
        if request.method != b"GET" or any(
            k in (b"content-length", b"transfer-encoding") for k, _ in request.headers
        ):
            results["rejected"].inc()
            self._error(405, "fresh evidence: GET without a body")
            return
        if not isinstance(self._next(), h11.EndOfMessage):
            return
        try:
            values = urllib.parse.parse_qs(query, max_num_fields=4).get("nonce", [])
            nonce = b64url_decode(values[0], what="nonce") if len(values) == 1 else b""
        except (FormatError, ValueError):
            nonce = b""
        if not MIN_NONCE <= len(nonce) <= MAX_NONCE:
            results["rejected"].inc()
            self._error(400, f"nonce: {MIN_NONCE}..{MAX_NONCE} bytes, base64url, exactly once")
            return
        identity = self.gateway.identity
        exporter = self.stream.channel_binding()
        with self.gateway._fresh:
            try:
                statement = identity.statement(nonce=nonce, tls_exporter=exporter)
                body = identity.evidence_buffer(statement)
            except Exception as exc:
                results["error"].inc()
                raise _NoEvidence(type(exc).__name__) from exc
        results["ok"].inc()
        self.status = 200
        headers = [
            (b"content-type", FRESH_CONTENT_TYPE.encode()),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"),
        ]
        self._send_all(h11.Response(status_code=200, headers=headers), h11.Data(data=body))

    def _body(self) -> Iterator[bytes]:
        passed = 0  # counted once, when the body ends or is abandoned
        try:
            while True:
                event = self._next()
                if isinstance(event, h11.Data):
                    piece = bytes(event.data)
                    passed += len(piece)
                    yield piece
                elif isinstance(event, h11.EndOfMessage):
                    return
        finally:
            self.gateway.relayed["request"].inc(passed)

    def _forward(self, request: h11.Request) -> None:
        gateway = self.gateway
        headers = [(k, v) for k, v in request.headers if k not in NOT_FORWARDED]
        has_body = any(k in (b"content-length", b"transfer-encoding") for k, _ in request.headers)
        if not has_body and not isinstance(self._next(), h11.EndOfMessage):
            # h11 ends a bodiless request at once; taking that end is what lets the
            # connection serve the client's next request instead of being closed
            return
        close = False
        if has_body and any(k == b"transfer-encoding" for k, _ in request.headers):
            # h11 decoded a chunked body (chunked wins over a Content-Length beside it):
            # it goes on chunked, and a length that does not describe it never does
            close = any(k == b"content-length" for k, _ in request.headers)
            headers = [(k, v) for k, v in headers if k != b"content-length"]
            headers.append((b"transfer-encoding", b"chunked"))
        headers += [
            (b"host", gateway.upstream_host),
            (b"x-forwarded-proto", b"https"),
            (b"x-forwarded-for", self.peer.encode()),
        ]
        try:
            response = gateway.upstream.request(
                request.method, request.target, headers, self._body() if has_body else None
            )
        except (BackendError, FormatError) as exc:
            log.warning("upstream request failed: %s", exc)
            self._error(502, "upstream unavailable")
            return
        try:
            self._relay(response, close=close)
        finally:
            response.close()

    def _relay(self, response: Response, *, close: bool = False) -> None:
        """The response head through h11, then the body in batches as it arrives: h11
        frames each piece for the client (re-chunking a chunked body) without copying it,
        and one batch is encrypted and sent at once. ``close`` ends the client's
        connection after it (a request framed both ways: RFC 9112 section 6.1 requires
        it, as what follows such a request may be read differently by another parser)."""
        head = response.head
        out = [(k, v) for k, v in head.headers if k not in HOP_BY_HOP]
        if close:
            out.append((b"connection", b"close"))
        if head.framing == "chunked":
            # a length next to chunked framing is void and must not reach the client
            out = [(k, v) for k, v in out if k != b"content-length"]
        self.status = head.status
        self._send(h11.Response(status_code=head.status, headers=out, reason=head.reason))
        send = self.h11.send_with_data_passthrough
        passed = 0  # counted once, when the body ends or is cut off
        try:
            for pieces in response.batches():
                wire: list[bytes | memoryview] = []
                batch = 0
                for piece in pieces:
                    # h11's writers take len() of the data and pass the object on: a view
                    # goes out uncopied, whatever the annotation says
                    wire += send(h11.Data(data=cast(bytes, piece))) or ()
                    batch += len(piece)
                self.stream.write_all(wire)
                passed += batch
        finally:
            self.gateway.relayed["response"].inc(passed)
        self._send(h11.EndOfMessage())


@dataclass(frozen=True)
class Started:
    """A gateway ready to serve, and what its operator must be told."""

    gateway: Gateway
    warnings: tuple[str, ...]


def start_gateway(
    settings: GatewaySettings,
    *,
    kind: str,
    attester_values: Mapping[str, Any],
    opt_in_values: Mapping[str, Any],
    receipts: Sequence[Path] = (),
    lifetime: int = 3600,
) -> Started:
    """Attest as ``kind``, bind the receipts' model digests, bind the listening socket.

    A kind whose evidence proves nothing (``sample``) is refused unless its own opt-in
    option (the flag a KBS takes, ``--insecure-allow-sample``) is given; then the
    warnings say so, for the caller to print loudly.
    """
    plugin = registry.plugin(kind)
    warnings: list[str] = []
    if plugin.insecure:
        config = registry.build_config(kind, opt_in_values)
        if not config.enabled():
            raise ConfigError(
                f"refusing to start: {kind} evidence is unsigned and proves nothing to "
                f"clients; pass {' '.join(config.opt_in_flags())} for a development gateway"
            )
        warnings.append(
            f"WARNING: INSECURE {kind} TEE: this gateway's evidence proves NOTHING "
            "(unsigned); development only"
        )
    if plugin.test_only and not plugin.insecure:
        warnings.append(f"WARNING: TEST ONLY {kind} TEE: evidence from a test CA, no hardware")
    attester = registry.attester_for(kind, **registry.attester_keywords(kind, attester_values))
    identity = AttestedIdentity(
        kind, attester, models=models_from_receipts(receipts), lifetime=lifetime
    )
    return Started(Gateway(settings, identity), tuple(warnings))
