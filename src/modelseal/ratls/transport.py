"""``AttestedTransport``: an httpx transport that talks only to attested gateways.

httpx drives an httpcore connection pool whose network backend is ours: when httpcore
asks to start TLS, the backend does the TLS 1.3 handshake with pyOpenSSL, checks the
certificate's evidence against the client policy (:class:`~modelseal.ratls.verify.
PeerPolicy`) and, unless disabled, asks the gateway for fresh evidence bound to a
random nonce and to this connection's exporter value, all before httpcore writes the
first byte of the request. A refusal raises ``EvidenceError`` or ``PolicyDenied`` (exit
code 4) out of ``client.send``; the request, headers included, never leaves the client.

Use it with any httpx-based client::

    transport = AttestedTransport(policy=parse_policy_text(open("policy.yaml").read()))
    with httpx.Client(transport=transport) as client:
        client.post("https://10.0.0.5:8443/v1/chat/completions", json=...)
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import ssl
import typing
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import h11
import httpcore
import httpx
from OpenSSL import SSL

from modelseal._internal.encoding import b64url_encode
from modelseal.errors import ConfigError, EvidenceError
from modelseal.policy import ReleasePolicy, parse_policy_text
from modelseal.ratls.tls import READ_SIZE, TlsStream, client_context, ready_within
from modelseal.ratls.verify import Attested, PeerPolicy
from modelseal.ratls.wire import FRESH_CONTENT_TYPE, FRESH_PATH, MAX_EVIDENCE_BUFFER

NONCE_BYTES = 32
UNUSED_SSL_CONTEXT = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


class _TcpStream(httpcore.NetworkStream):
    """A plain TCP connection that only ever becomes an attested TLS stream."""

    def __init__(self, sock: socket.socket, peer: PeerPolicy, fresh: bool) -> None:
        self.sock = sock
        self.peer = peer
        self.fresh = fresh

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        raise httpcore.UnsupportedProtocol("attested transport: plain HTTP is not attested")

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        raise httpcore.UnsupportedProtocol("attested transport: plain HTTP is not attested")

    def close(self) -> None:
        self.sock.close()

    def start_tls(
        self,
        ssl_context: Any,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        del ssl_context  # certificates are judged by their evidence, not by a CA
        stream = TlsStream.client(client_context(), self.sock, timeout or 30.0, server_hostname)
        try:
            try:
                stream.handshake()
            except SSL.Error as exc:
                raise httpcore.ConnectError(f"TLS handshake failed: {exc}") from exc
            except TimeoutError as exc:
                raise httpcore.ConnectTimeout("TLS handshake timed out") from exc
            attested = attest_connection(stream, self.peer, fresh=self.fresh, host=server_hostname)
        except BaseException:
            stream.close()
            raise
        return _AttestedStream(stream, attested)


def attest_connection(
    stream: TlsStream, peer: PeerPolicy, *, fresh: bool, host: str | None
) -> Attested:
    """Check the certificate's evidence, then (``fresh``) ask for evidence bound to a
    new nonce and this connection; return what was established."""
    cert = stream.peer_certificate_der()
    if cert is None:
        raise EvidenceError("the server presented no certificate")
    attested = peer.check_certificate(cert)
    if not fresh:
        return attested
    nonce = os.urandom(NONCE_BYTES)
    body = _get_fresh(stream, nonce, host or "gateway")
    return peer.check_fresh(
        body, certificate_der=cert, nonce=nonce, exporter=stream.channel_binding()
    )


class FreshExchange:
    """The client side of ``GET /.well-known/modelseal-attestation?nonce=...`` without I/O:
    :attr:`request` is the bytes to send, :meth:`feed` takes what the gateway answers
    (``b""`` for the end of the stream) and returns the evidence once the response is
    complete, ``None`` while it needs more. Bounded: a 64 KiB head, a 1 MiB body."""

    def __init__(self, nonce: bytes, host: str) -> None:
        self._conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=64 * 1024)
        target = f"{FRESH_PATH}?nonce={b64url_encode(nonce)}".encode()
        head = h11.Request(
            method="GET", target=target, headers=[("host", host), ("accept", FRESH_CONTENT_TYPE)]
        )
        self.request: bytes = (self._conn.send(head) or b"") + (
            self._conn.send(h11.EndOfMessage()) or b""
        )
        self._body = bytearray()
        self._status = 0

    def feed(self, data: bytes) -> bytes | None:
        if not data:
            raise EvidenceError("the gateway closed the connection instead of attesting")
        try:
            self._conn.receive_data(data)
            while True:
                event = self._conn.next_event()
                if event is h11.NEED_DATA:
                    return None
                if isinstance(event, h11.Response):
                    self._status = event.status_code
                elif isinstance(event, h11.Data):
                    self._body += event.data
                    if len(self._body) > MAX_EVIDENCE_BUFFER:
                        raise EvidenceError("the gateway's fresh evidence is too large")
                elif isinstance(event, h11.EndOfMessage):
                    return self._finish()
                elif isinstance(event, h11.ConnectionClosed):
                    raise EvidenceError("the gateway closed the connection instead of attesting")
        except h11.ProtocolError as exc:
            raise EvidenceError("the gateway's fresh-evidence response is malformed") from exc

    def _finish(self) -> bytes:
        if self._status != 200:
            raise EvidenceError(
                f"the gateway answered {self._status} to the fresh-evidence request"
            )
        if self._conn.their_state is not h11.DONE or self._conn.our_state is not h11.DONE:
            raise EvidenceError("the gateway closed the connection after attesting")
        return bytes(self._body)


def _get_fresh(stream: TlsStream, nonce: bytes, host: str) -> bytes:
    """Fresh evidence for ``nonce`` over this connection (:class:`FreshExchange`)."""
    exchange = FreshExchange(nonce, host)
    stream.write(exchange.request)
    while (evidence := exchange.feed(stream.read(READ_SIZE))) is None:
        pass
    return evidence


class _AttestedStream(httpcore.NetworkStream):
    """The verified TLS stream handed to httpcore."""

    def __init__(self, stream: TlsStream, attested: Attested) -> None:
        self.stream = stream
        self.attested = attested

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        try:
            return self.stream.read(max_bytes, timeout)
        except TimeoutError as exc:
            raise httpcore.ReadTimeout(str(exc)) from exc
        except (SSL.Error, OSError) as exc:
            raise httpcore.ReadError(str(exc) or type(exc).__name__) from exc

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        try:
            self.stream.write(buffer, timeout)
        except TimeoutError as exc:
            raise httpcore.WriteTimeout(str(exc)) from exc
        except (SSL.Error, OSError) as exc:
            raise httpcore.WriteError(str(exc) or type(exc).__name__) from exc

    def close(self) -> None:
        self.stream.close()

    def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        raise httpcore.UnsupportedProtocol("TLS inside TLS is not supported")

    def get_extra_info(self, info: str) -> Any:
        if info == "modelseal_attested":
            return self.attested
        if info == "is_readable":
            return ready_within(self.stream.sock, select.POLLIN, 0)
        return None


class _Backend(httpcore.NetworkBackend):
    def __init__(self, peer: PeerPolicy, fresh: bool) -> None:
        self.peer = peer
        self.fresh = fresh

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        try:
            sock = socket.create_connection((host, port), timeout)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(str(exc)) from exc
        except OSError as exc:
            raise httpcore.ConnectError(str(exc)) from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return _TcpStream(sock, self.peer, self.fresh)

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: typing.Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        raise httpcore.UnsupportedProtocol("attested transport: unix sockets are not attested")


class _ResponseStream(httpx.SyncByteStream):
    def __init__(self, stream: typing.Iterable[bytes]) -> None:
        self._stream = stream

    def __iter__(self) -> Iterator[bytes]:
        with _mapped():
            yield from self._stream

    def close(self) -> None:
        close = getattr(self._stream, "close", None)
        if close is not None:
            close()


#: The httpcore errors :func:`httpx_error` maps.
CORE_ERRORS = (
    httpcore.TimeoutException,
    httpcore.NetworkError,
    httpcore.ProtocolError,
    httpcore.UnsupportedProtocol,
)


def httpx_error(exc: Exception) -> Exception:
    """The httpx error httpx users catch for an httpcore error (others unchanged)."""
    kinds: tuple[tuple[type[Exception], type[Exception]], ...] = (
        (httpcore.ConnectTimeout, httpx.ConnectTimeout),
        (httpcore.TimeoutException, httpx.ReadTimeout),
        (httpcore.ConnectError, httpx.ConnectError),
        (httpcore.NetworkError, httpx.ReadError),
        (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
        (httpcore.ProtocolError, httpx.RemoteProtocolError),
    )
    for core, mapped in kinds:
        if isinstance(exc, core):
            error = mapped(str(exc))
            error.__cause__ = exc
            return error
    return exc


@contextlib.contextmanager
def _mapped() -> Iterator[None]:
    try:
        yield
    except CORE_ERRORS as exc:
        raise httpx_error(exc) from exc


def core_request(request: httpx.Request, content: Any) -> httpcore.Request:
    """The httpcore request for an https ``request`` (``ConfigError`` for any other scheme:
    only TLS can be attested)."""
    if request.url.scheme != "https":
        raise ConfigError(
            f"attested transport: {request.url.scheme}:// cannot be attested; use https://"
        )
    return httpcore.Request(
        method=request.method,
        url=httpcore.URL(
            scheme=request.url.raw_scheme,
            host=request.url.raw_host,
            port=request.url.port,
            target=request.url.raw_path,
        ),
        headers=request.headers.raw,
        content=content,
        extensions=request.extensions,
    )


def pool_options(backend: Any, max_connections: int) -> dict[str, Any]:
    """httpcore pool settings of both attested transports."""
    return {
        # never used (the backend does TLS with pyOpenSSL); given so that httpcore does not
        # build its default context, CA bundle and all, for every connection
        "ssl_context": UNUSED_SSL_CONTEXT,
        "network_backend": backend,
        "max_connections": max_connections,
        "http1": True,
        "http2": False,
    }


def load_policy(policy: ReleasePolicy | str | Path) -> ReleasePolicy:
    """A parsed policy, or the policy file at ``policy`` parsed (``ConfigError``)."""
    if isinstance(policy, ReleasePolicy):
        return policy
    try:
        return parse_policy_text(Path(policy).read_bytes())
    except OSError as exc:
        raise ConfigError(f"cannot read the policy {policy}: {exc.strerror}") from exc


class AttestedSettings:
    """What both attested transports take (see :class:`AttestedTransport`)."""

    def __init__(
        self,
        policy: ReleasePolicy | str | Path,
        *,
        tee_options: Mapping[str, Any] | None = None,
        fresh: bool = True,
        max_age: float | None = None,
        max_connections: int = 10,
        peer: PeerPolicy | None = None,
    ) -> None:
        self.peer = peer or PeerPolicy(
            load_policy(policy), tee_options=tee_options, fresh=fresh, max_age=max_age
        )
        self.fresh = fresh
        self.max_connections = max_connections


class AttestedTransport(AttestedSettings, httpx.BaseTransport):
    """An httpx transport that sends requests only to gateways the policy accepts.

    ``policy``: a :class:`ReleasePolicy` or the path of a policy file. ``tee_options``:
    verifier options by name (``{"mock_tdx_root": "ca.pem", "collateral": ...}``), as
    ``modelseal kbs serve`` takes them. ``fresh`` (default): per connection, evidence
    bound to a nonce and the TLS exporter besides the certificate's; False trusts the
    certificate's evidence alone (cached, cheapest). ``max_age`` caps the evidence age.
    """

    def __init__(self, policy: ReleasePolicy | str | Path, **settings: Any) -> None:
        super().__init__(policy, **settings)
        self._pool = httpcore.ConnectionPool(
            **pool_options(_Backend(self.peer, self.fresh), self.max_connections)
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.SyncByteStream)
        req = core_request(request, request.stream)
        with _mapped():
            resp = self._pool.handle_request(req)
        assert isinstance(resp.stream, typing.Iterable)
        return httpx.Response(
            status_code=resp.status,
            headers=resp.headers,
            stream=_ResponseStream(resp.stream),
            extensions=resp.extensions,
        )

    def close(self) -> None:
        self._pool.close()
