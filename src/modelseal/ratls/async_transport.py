"""``AsyncAttestedTransport``: :class:`~modelseal.ratls.transport.AttestedTransport` for
``httpx.AsyncClient`` (and so ``openai.AsyncOpenAI``).

The same checks in the same order, before httpcore writes a byte of the request: TLS 1.3
with pyOpenSSL on memory BIOs over an anyio TCP stream, the certificate's evidence, then
fresh evidence bound to a nonce and this connection's exporter value. Verification is
CPU work that may download collateral, so it runs in a worker thread, never on the event
loop.
"""

from __future__ import annotations

import functools
import os
import typing
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.abc
import anyio.to_thread
import httpcore
import httpx
from OpenSSL import SSL

from modelseal.errors import EvidenceError
from modelseal.policy import ReleasePolicy
from modelseal.ratls.tls import (
    FLUSH_CHUNK,
    READ_SIZE,
    WIRE_CHUNK,
    client_context,
    plaintext,
    server_name_ok,
    with_buffered_records,
)
from modelseal.ratls.transport import (
    CORE_ERRORS,
    NONCE_BYTES,
    AttestedSettings,
    FreshExchange,
    core_request,
    httpx_error,
    pool_options,
)
from modelseal.ratls.verify import Attested, PeerPolicy
from modelseal.ratls.wire import EXPORTER_LABEL, EXPORTER_LENGTH

T = TypeVar("T")


class _AsyncTls:
    """One client TLS connection over an anyio byte stream (memory BIOs)."""

    def __init__(self, stream: anyio.abc.ByteStream, server_name: str | None) -> None:
        self.stream = stream
        self.conn = SSL.Connection(client_context(), None)
        if server_name is not None and server_name_ok(server_name):
            self.conn.set_tlsext_host_name(server_name.encode("idna"))
        self.conn.set_connect_state()
        self._eof = False

    async def _flush(self) -> None:
        while True:
            try:
                data = self.conn.bio_read(FLUSH_CHUNK)
            except SSL.WantReadError:
                return
            await self.stream.send(data)
            if len(data) < FLUSH_CHUNK:
                return

    async def _fill(self) -> None:
        try:
            data = await self.stream.receive(WIRE_CHUNK)
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            data = b""
        if data:
            self.conn.bio_write(data)
        else:
            self._eof = True
            self.conn.bio_shutdown()

    async def drive(self, op: Callable[[], T]) -> T:
        while True:
            try:
                result = op()
            except SSL.WantReadError:
                await self._flush()
                if self._eof:
                    raise ConnectionResetError("TLS peer closed the connection") from None
                await self._fill()
                continue
            await self._flush()
            return result

    async def read(self, max_bytes: int) -> bytes:
        recv = functools.partial(plaintext, self.conn, eof=lambda: self._eof)
        try:
            first = await self.drive(lambda: recv(max_bytes))
        except ConnectionResetError:
            return b""
        return with_buffered_records(recv, first, max_bytes)

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            sent = await self.drive(functools.partial(self.conn.send, view[:WIRE_CHUNK]))
            view = view[sent:]

    def peer_certificate_der(self) -> bytes | None:
        from modelseal.crypto.tls_identity import certificate_der

        cert = self.conn.get_peer_certificate(as_cryptography=True)
        return None if cert is None else certificate_der(cert)

    def channel_binding(self) -> bytes:
        return self.conn.export_keying_material(EXPORTER_LABEL, EXPORTER_LENGTH)

    async def aclose(self) -> None:
        try:
            self.conn.shutdown()
            await self._flush()
        except (SSL.Error, OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass
        await self.stream.aclose()


async def attest_connection_async(
    tls: _AsyncTls, peer: PeerPolicy, *, fresh: bool, host: str | None
) -> Attested:
    """:func:`~modelseal.ratls.transport.attest_connection`, for an async connection."""
    cert = tls.peer_certificate_der()
    if cert is None:
        raise EvidenceError("the server presented no certificate")
    attested = await anyio.to_thread.run_sync(peer.check_certificate, cert)
    if not fresh:
        return attested
    nonce = os.urandom(NONCE_BYTES)
    exchange = FreshExchange(nonce, host or "gateway")
    await tls.write(exchange.request)
    while (evidence := exchange.feed(await tls.read(READ_SIZE))) is None:
        pass
    exporter = tls.channel_binding()
    return await anyio.to_thread.run_sync(
        lambda: peer.check_fresh(evidence, certificate_der=cert, nonce=nonce, exporter=exporter)
    )


class _AsyncAttestedStream(httpcore.AsyncNetworkStream):
    def __init__(self, tls: _AsyncTls, attested: Attested) -> None:
        self.tls = tls
        self.attested = attested

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        try:
            with anyio.fail_after(timeout):
                return await self.tls.read(max_bytes)
        except TimeoutError as exc:
            raise httpcore.ReadTimeout(str(exc)) from exc
        except (SSL.Error, OSError, anyio.BrokenResourceError) as exc:
            raise httpcore.ReadError(str(exc) or type(exc).__name__) from exc

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        try:
            with anyio.fail_after(timeout):
                await self.tls.write(buffer)
        except TimeoutError as exc:
            raise httpcore.WriteTimeout(str(exc)) from exc
        except (SSL.Error, OSError, anyio.BrokenResourceError) as exc:
            raise httpcore.WriteError(str(exc) or type(exc).__name__) from exc

    async def aclose(self) -> None:
        await self.tls.aclose()

    async def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.UnsupportedProtocol("TLS inside TLS is not supported")

    def get_extra_info(self, info: str) -> Any:
        return self.attested if info == "modelseal_attested" else None


class _AsyncTcpStream(httpcore.AsyncNetworkStream):
    def __init__(self, stream: anyio.abc.ByteStream, peer: PeerPolicy, fresh: bool) -> None:
        self.stream = stream
        self.peer = peer
        self.fresh = fresh

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        raise httpcore.UnsupportedProtocol("attested transport: plain HTTP is not attested")

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        raise httpcore.UnsupportedProtocol("attested transport: plain HTTP is not attested")

    async def aclose(self) -> None:
        await self.stream.aclose()

    async def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.AsyncNetworkStream:
        del ssl_context  # certificates are judged by their evidence, not by a CA
        tls = _AsyncTls(self.stream, server_hostname)
        try:
            with anyio.fail_after(timeout or 30.0):
                try:
                    await tls.drive(tls.conn.do_handshake)
                except (SSL.Error, ConnectionResetError) as exc:
                    raise httpcore.ConnectError(f"TLS handshake failed: {exc}") from exc
                attested = await attest_connection_async(
                    tls, self.peer, fresh=self.fresh, host=server_hostname
                )
        except TimeoutError as exc:
            await tls.aclose()
            raise httpcore.ConnectTimeout("TLS handshake or attestation timed out") from exc
        except BaseException:
            await tls.aclose()
            raise
        return _AsyncAttestedStream(tls, attested)


class _AsyncBackend(httpcore.AsyncNetworkBackend):
    def __init__(self, peer: PeerPolicy, fresh: bool) -> None:
        self.peer = peer
        self.fresh = fresh

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            with anyio.fail_after(timeout):
                stream = await anyio.connect_tcp(host, port)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(str(exc)) from exc
        except OSError as exc:
            raise httpcore.ConnectError(str(exc)) from exc
        return _AsyncTcpStream(stream, self.peer, self.fresh)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: typing.Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.UnsupportedProtocol("attested transport: unix sockets are not attested")

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)


class _AsyncResponseStream(httpx.AsyncByteStream):
    def __init__(self, stream: typing.AsyncIterable[bytes]) -> None:
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for part in self._stream:
                yield part
        except CORE_ERRORS as exc:
            raise httpx_error(exc) from exc

    async def aclose(self) -> None:
        close = getattr(self._stream, "aclose", None)
        if close is not None:
            await close()


class AsyncAttestedTransport(AttestedSettings, httpx.AsyncBaseTransport):
    """The async twin of ``AttestedTransport`` (same arguments, same refusals)."""

    def __init__(self, policy: ReleasePolicy | str | Path, **settings: Any) -> None:
        super().__init__(policy, **settings)
        self._pool = httpcore.AsyncConnectionPool(
            **pool_options(_AsyncBackend(self.peer, self.fresh), self.max_connections)
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.AsyncByteStream)
        req = core_request(request, request.stream)
        try:
            resp = await self._pool.handle_async_request(req)
        except CORE_ERRORS as exc:
            raise httpx_error(exc) from exc
        assert isinstance(resp.stream, typing.AsyncIterable)
        return httpx.Response(
            status_code=resp.status,
            headers=resp.headers,
            stream=_AsyncResponseStream(resp.stream),
            extensions=resp.extensions,
        )

    async def aclose(self) -> None:
        await self._pool.aclose()
