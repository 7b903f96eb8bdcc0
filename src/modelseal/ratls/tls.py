"""A TLS 1.3 stream over pyOpenSSL with timeouts, and the RFC 9266 channel binding.

Python's ``ssl`` module cannot export keying material (RFC 5705 / RFC 8446 section 7.5),
which the fresh-evidence exchange binds to; pyOpenSSL exposes
``Connection.export_keying_material`` and takes the in-memory key object. Its blocking
calls have no timeout, so the socket is non-blocking and every ``Want*`` condition waits
on ``select`` with the caller's deadline, as urllib3's pyOpenSSL adapter does: a stalled
peer ends in ``TimeoutError``, never a thread blocked forever.
"""

from __future__ import annotations

import contextlib
import functools
import select
import socket
import time
from collections.abc import Callable
from typing import TypeVar

from OpenSSL import SSL

from modelseal.crypto.tls_identity import certificate_der
from modelseal.ratls.wire import EXPORTER_LABEL, EXPORTER_LENGTH

T = TypeVar("T")

#: Largest plaintext read at once (one TLS record is at most 16 KiB).
READ_SIZE = 64 * 1024


class TlsStream:
    """One TLS connection on a non-blocking socket; ``timeout`` bounds every wait."""

    def __init__(self, connection: SSL.Connection, sock: socket.socket, timeout: float) -> None:
        self.connection = connection
        self.sock = sock
        self.timeout = timeout
        sock.setblocking(False)

    @classmethod
    def server(cls, ctx: SSL.Context, sock: socket.socket, timeout: float) -> TlsStream:
        conn = SSL.Connection(ctx, sock)
        conn.set_accept_state()
        return cls(conn, sock, timeout)

    @classmethod
    def client(
        cls, ctx: SSL.Context, sock: socket.socket, timeout: float, server_name: str | None
    ) -> TlsStream:
        conn = SSL.Connection(ctx, sock)
        if server_name and not _is_ip(server_name):
            conn.set_tlsext_host_name(server_name.encode("idna"))
        conn.set_connect_state()
        return cls(conn, sock, timeout)

    def _retry(self, op: Callable[[], T], timeout: float | None) -> T:
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            try:
                return op()
            except SSL.WantReadError:
                self._wait(deadline, read=True)
            except SSL.WantWriteError:
                self._wait(deadline, read=False)

    def _wait(self, deadline: float, *, read: bool) -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("TLS peer did not answer in time")
        fds = [self.sock]
        ready = select.select(fds, [], [], left) if read else select.select([], fds, [], left)
        if not any(ready):
            raise TimeoutError("TLS peer did not answer in time")

    def handshake(self, timeout: float | None = None) -> None:
        """Complete the TLS handshake (``SSL.Error`` on failure)."""
        self._retry(self.connection.do_handshake, timeout)

    def read(self, max_bytes: int = READ_SIZE, timeout: float | None = None) -> bytes:
        """Up to ``max_bytes`` of plaintext; ``b""`` once the peer closed."""

        def recv() -> bytes:
            try:
                return self.connection.recv(max_bytes)
            except SSL.ZeroReturnError:
                return b""
            except SSL.SysCallError as exc:
                if exc.args and exc.args[0] in (-1, 0):  # EOF without close_notify
                    return b""
                raise

        return self._retry(recv, timeout)

    def write(self, data: bytes | memoryview, timeout: float | None = None) -> None:
        """Send all of ``data``."""
        view = memoryview(data)
        while view:
            chunk = view[:READ_SIZE]
            sent = self._retry(functools.partial(self.connection.send, chunk), timeout)
            view = view[sent:]

    def peer_certificate_der(self) -> bytes | None:
        """The DER certificate the peer proved it holds the key of, or None."""
        cert = self.connection.get_peer_certificate(as_cryptography=True)
        return None if cert is None else certificate_der(cert)

    def channel_binding(self) -> bytes:
        """RFC 9266 ``tls-exporter``: 32 bytes exported with the label
        ``EXPORTER-Channel-Binding`` and no context, unique to this TLS connection."""
        return self.connection.export_keying_material(EXPORTER_LABEL, EXPORTER_LENGTH)

    def close(self) -> None:
        """Send close_notify if possible, then close the socket."""
        with contextlib.suppress(SSL.Error, OSError):
            self.connection.shutdown()
        self.sock.close()


def _is_ip(host: str) -> bool:
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
        except OSError:
            continue
        return True
    return False


def client_context() -> SSL.Context:
    """A TLS 1.3-only client context that accepts any certificate in the handshake: the
    certificate is trusted only after its attestation evidence is verified, before any
    request byte is written."""
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
    ctx.set_verify(SSL.VERIFY_PEER, lambda *_args: True)
    return ctx
