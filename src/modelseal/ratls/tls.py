"""A TLS 1.3 stream over pyOpenSSL with timeouts, and the RFC 9266 channel binding.

Python's ``ssl`` module cannot export keying material (RFC 5705 / RFC 8446 section 7.5),
which the fresh-evidence exchange binds to; pyOpenSSL exposes
``Connection.export_keying_material`` and takes the in-memory key object.

OpenSSL runs on memory BIOs, as asyncio's TLS does: this class moves ciphertext between
them and a non-blocking socket. That gives every wait a deadline (a stalled peer ends in
``TimeoutError``, never a thread blocked forever) and batches the records of one write
into one ``send`` and the records of one ``recv`` into one read (with a socket BIO,
OpenSSL makes a system call per 16 KiB record).
"""

from __future__ import annotations

import contextlib
import functools
import math
import select
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from OpenSSL import SSL

from modelseal.crypto.tls_identity import certificate_der, whole_writes
from modelseal.ratls.wire import EXPORTER_LABEL, EXPORTER_LENGTH

T = TypeVar("T")

#: Largest plaintext read at once (one TLS record is at most 16 KiB).
READ_SIZE = 64 * 1024
#: Plaintext encrypted, and ciphertext received, at once.
WIRE_CHUNK = 256 * 1024
#: Ciphertext taken from OpenSSL at once: one write's records with their overhead.
FLUSH_CHUNK = WIRE_CHUNK + 16 * 1024
#: Pieces of a write smaller than this are copied together (one TLS record's plaintext).
GATHER = 16 * 1024


class TlsStream:
    """One TLS connection on a non-blocking socket; ``timeout`` bounds every wait."""

    def __init__(self, connection: SSL.Connection, sock: socket.socket, timeout: float) -> None:
        self.connection = connection
        self.sock = sock
        self.timeout = timeout
        self._eof = False
        sock.setblocking(False)

    @classmethod
    def server(cls, ctx: SSL.Context, sock: socket.socket, timeout: float) -> TlsStream:
        conn = SSL.Connection(ctx, None)
        conn.set_accept_state()
        return cls(conn, sock, timeout)

    @classmethod
    def client(
        cls, ctx: SSL.Context, sock: socket.socket, timeout: float, server_name: str | None
    ) -> TlsStream:
        conn = SSL.Connection(ctx, None)
        if server_name is not None and server_name_ok(server_name):
            conn.set_tlsext_host_name(server_name.encode("idna"))
        conn.set_connect_state()
        return cls(conn, sock, timeout)

    # --- ciphertext between the memory BIOs and the socket -----------------------------

    def _deadline(self, timeout: float | None) -> float:
        return time.monotonic() + (self.timeout if timeout is None else timeout)

    def _wait(self, deadline: float, *, read: bool) -> None:
        left = deadline - time.monotonic()
        try:
            ready = left > 0 and ready_within(
                self.sock, select.POLLIN if read else select.POLLOUT, left
            )
        except ValueError:
            # another thread closed this stream (its fd is -1 now): the same
            # OSError a read of a closed socket raises, not a ValueError
            raise ConnectionAbortedError("TLS stream was closed") from None
        if not ready:
            raise TimeoutError("TLS peer did not answer in time")

    def _flush(self, deadline: float) -> None:
        """Send every byte of ciphertext OpenSSL has produced."""
        while True:
            try:
                data = self.connection.bio_read(FLUSH_CHUNK)
            except SSL.WantReadError:
                return
            except ValueError:
                # another thread closed this stream while we flushed: pyOpenSSL reports its
                # torn-down memory BIO as an "unknown bio failure"; the same OSError as above
                raise ConnectionAbortedError("TLS stream was closed") from None
            view = memoryview(data)
            while view:
                try:
                    sent = self.sock.send(view)
                except BlockingIOError:
                    self._wait(deadline, read=False)
                    continue
                view = view[sent:]
            if len(data) < FLUSH_CHUNK:  # the memory BIO is empty now
                return

    def _fill(self, deadline: float) -> None:
        """Feed OpenSSL the next ciphertext from the socket (or the end of it)."""
        while True:
            try:
                data = self.sock.recv(WIRE_CHUNK)
            except BlockingIOError:
                self._wait(deadline, read=True)
                continue
            if data:
                self.connection.bio_write(data)
            else:
                self._eof = True
                self.connection.bio_shutdown()
            return

    def _drive(self, op: Callable[[], T], timeout: float | None) -> T:
        """Run ``op`` until OpenSSL stops asking for more input."""
        deadline = self._deadline(timeout)
        while True:
            try:
                result = op()
            except SSL.WantReadError:
                self._flush(deadline)
                if self._eof:
                    raise ConnectionResetError("TLS peer closed the connection") from None
                self._fill(deadline)
                continue
            self._flush(deadline)
            return result

    # --- the stream -------------------------------------------------------------------

    def handshake(self, timeout: float | None = None) -> None:
        """Complete the TLS handshake (``SSL.Error`` on failure)."""
        self._drive(self.connection.do_handshake, timeout)

    def read(self, max_bytes: int = READ_SIZE, timeout: float | None = None) -> bytes:
        """Up to ``max_bytes`` of plaintext; ``b""`` once the peer closed. Waits for the
        first record only, then takes every further record already received."""
        recv = functools.partial(plaintext, self.connection, eof=lambda: self._eof)
        try:
            first = self._drive(lambda: recv(max_bytes), timeout)
        except ConnectionResetError:
            return b""
        return with_buffered_records(recv, first, max_bytes)

    def write(self, data: bytes | memoryview, timeout: float | None = None) -> None:
        """Encrypt all of ``data`` and send it (records batched into few sends)."""
        self.write_all((data,), timeout)

    def write_all(self, pieces: Iterable[bytes | memoryview], timeout: float | None = None) -> None:
        """Encrypt and send ``pieces`` in order, as one write: their records leave in
        sends of up to :data:`WIRE_CHUNK`, the last one when every piece is encrypted.
        Small pieces side by side (a chunk-size line, a server-sent event, its CRLF) are
        gathered into one record; each encrypted alone would be a record of its own."""
        deadline = self._deadline(timeout)
        pending = 0
        for piece in gathered(pieces):
            view = memoryview(piece)
            while view:
                # up to WIRE_CHUNK encrypted into the memory BIO at once, and sent once
                # that much is waiting, so a large write holds at most about twice that
                # in ciphertext
                try:
                    sent = self.connection.send(view[:WIRE_CHUNK])
                except SSL.WantReadError:  # a post-handshake message must be read first
                    self._flush(deadline)
                    self._fill(deadline)
                    continue
                view = view[sent:]
                pending += sent
                if pending >= WIRE_CHUNK:
                    self._flush(deadline)
                    pending = 0
        self._flush(deadline)

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
        with contextlib.suppress(SSL.Error, OSError, TimeoutError):
            self.connection.shutdown()
            self._flush(self._deadline(1.0))
        self.sock.close()


def gathered(
    pieces: Iterable[bytes | memoryview],
) -> Iterator[bytes | bytearray | memoryview]:
    """``pieces`` with each run of pieces under :data:`GATHER` bytes copied together (a
    run is handed on once it reaches that size, or before a larger piece); larger pieces
    pass on uncopied."""
    small = bytearray()
    for piece in pieces:
        if len(piece) < GATHER:
            small += piece
            if len(small) < GATHER:
                continue
        if small:
            yield small
            small = bytearray()
        if len(piece) >= GATHER:
            yield piece
    if small:
        yield small


def ready_within(sock: socket.socket, events: int, seconds: float) -> bool:
    """Whether ``sock`` is ready for ``events`` (or failed) within ``seconds``.

    ``poll``, not ``select``: a process serving many connections has descriptors above
    ``FD_SETSIZE`` (1024), which ``select`` cannot wait on."""
    poller = select.poll()
    poller.register(sock, events)
    return bool(poller.poll(max(0, math.ceil(seconds * 1000))))


def plaintext(conn: SSL.Connection, max_bytes: int, *, eof: Callable[[], bool]) -> bytes:
    """One ``recv``: ``b""`` at the end of the stream (close_notify, or EOF without one),
    ``SSL.WantReadError`` when OpenSSL needs more ciphertext."""
    try:
        return conn.recv(max_bytes)
    except SSL.ZeroReturnError:
        return b""
    except SSL.SysCallError as exc:
        if eof() or (exc.args and exc.args[0] in (-1, 0)):
            return b""
        raise


def with_buffered_records(recv: Callable[[int], bytes], first: bytes, max_bytes: int) -> bytes:
    """``first`` plus every further record OpenSSL can decrypt without more input, up to
    ``max_bytes`` (one TLS record is at most 16 KiB: fewer, larger reads above)."""
    parts, size = [first], len(first)
    while first and size < max_bytes:
        try:
            more = recv(max_bytes - size)
        except SSL.WantReadError:
            break
        if not more:
            break
        parts.append(more)
        size += len(more)
    return b"".join(parts) if len(parts) > 1 else first


def server_name_ok(host: str | None) -> bool:
    """True when ``host`` goes into SNI: a DNS name (TLS never sends an IP address)."""
    return bool(host) and not _is_ip(str(host))


def _is_ip(host: str) -> bool:
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
        except OSError:
            continue
        return True
    return False


@functools.cache
def client_context() -> SSL.Context:
    """A TLS 1.3-only client context that accepts any certificate in the handshake: the
    certificate is trusted only after its attestation evidence is verified, before any
    request byte is written. One per process (OpenSSL shares a configured context between
    connections and threads)."""
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
    ctx.set_verify(SSL.VERIFY_PEER, lambda *_args: True)
    whole_writes(ctx)
    return ctx
