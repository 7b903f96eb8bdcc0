"""The gateway's HTTP/1.1 client to the local inference server, built for relaying.

h11 writes the request and parses the response head; the body is then read straight
from the socket into a reusable buffer and handed on as memoryview slices, each as large
as what has arrived. A 100 MB download so moves in about a hundred large pieces with no
parsing or copying per piece (a general client's 64 KiB reads through a parser cost more
CPU than encrypting the bytes), while a server-sent event is handed on as soon as its
bytes arrive: nothing ever waits for a buffer to fill.

The framing is still tracked exactly: a Content-Length is counted, chunked framing is
parsed (bounded chunk-size lines and trailers, strict CRLFs) and re-encoded by the
caller, and a connection goes back to the pool only when its response ended exactly
where its framing said. Failures are typed: the upstream breaking off or timing out is
a :class:`~modelseal.errors.BackendError`, a malformed response a
:class:`~modelseal.errors.FormatError`; neither message quotes a byte of the response.
"""

from __future__ import annotations

import dataclasses
import re
import select
import socket
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import h11

from modelseal.errors import BackendError, FormatError
from modelseal.ratls.tls import ready_within

#: The body buffer of one response in flight: the largest piece handed on at once
#: (256 KiB costs about 15 % more CPU per byte).
BUFFER_SIZE = 1024 * 1024
#: Idle body buffers kept for reuse (a fresh one is zeroed and faulted in, page by page).
SPARE_BUFFERS = 8
#: Most slices of the buffer handed on in one batch: a body of tiny chunks would
#: otherwise make one slice object per few bytes received (tens of MB per MiB).
MAX_BATCH_PIECES = 256
#: Largest response head (status line and headers), as for requests.
MAX_HEAD_BYTES = 64 * 1024
#: Largest chunk-size line, extensions included.
MAX_CHUNK_LINE = 4096
#: Largest trailer section of a chunked body (read, bounded, and dropped).
MAX_TRAILER_BYTES = 64 * 1024
#: A chunk size: 1 to 16 hex digits, optional extensions, optional trailing blanks
#: (the leniency h11 has for servers in the wild); extensions are dropped.
_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})(?:;[^\r\n]*)?[ \t]*")
_CRLF = b"\r\n"


@dataclass(frozen=True)
class Head:
    """The response's status line and headers (names lowercased by h11)."""

    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    #: the body framing: ``length`` (``size`` bytes), ``chunked`` or ``close`` (until EOF)
    framing: str
    size: int
    keep_alive: bool


class UpstreamPool:
    """Connections to one upstream, idle ones kept for reuse (bounded)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        connect_timeout: float,
        io_timeout: float,
        max_idle: int,
    ) -> None:
        self.host = host
        self.port = port
        self.connect_timeout = connect_timeout
        self.io_timeout = io_timeout
        self.max_idle = max_idle
        self._idle: list[socket.socket] = []
        self._buffers: list[bytearray] = []
        self._lock = threading.Lock()
        self._closed = False

    def take(self) -> socket.socket:
        """An idle connection the upstream has not closed, or a new one."""
        while True:
            with self._lock:
                sock = self._idle.pop() if self._idle else None
            if sock is None:
                break
            if not _readable(sock):  # an idle connection has nothing to say but EOF
                return sock
            sock.close()
        try:
            sock = socket.create_connection((self.host, self.port), self.connect_timeout)
        except OSError as exc:
            raise BackendError(f"upstream unavailable: {type(exc).__name__}") from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(self.io_timeout)
        return sock

    def give_back(self, sock: socket.socket) -> None:
        with self._lock:
            # a response that ends after close() (on a thread still serving) is not kept
            if not self._closed and len(self._idle) < self.max_idle:
                self._idle.append(sock)
                return
        sock.close()

    def buffer(self) -> bytearray:
        with self._lock:
            if self._buffers:
                return self._buffers.pop()
        return bytearray(BUFFER_SIZE)

    def recycle(self, buf: bytearray) -> None:
        with self._lock:
            if not self._closed and len(self._buffers) < SPARE_BUFFERS:
                self._buffers.append(buf)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
            self._buffers.clear()
        for sock in idle:
            sock.close()

    def request(
        self,
        method: bytes,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        body: Iterable[bytes] | None,
    ) -> Response:
        """Send the request (streaming ``body``), read the response head.

        Errors of the upstream are ``BackendError``/``FormatError``; an error raised by
        ``body`` (the client's side) passes through unchanged. An upstream that answers
        before taking the whole request (a 413 for an upload too large) and closes makes
        the sending fail: its answer is still read and relayed, as httpx does.
        """
        sock = self.take()
        conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD_BYTES)
        unsent: BackendError | None = None
        try:
            try:
                _send(sock, conn.send(h11.Request(method=method, target=target, headers=headers)))
                for data in body or ():
                    _send(sock, conn.send(h11.Data(data=data)))
                _send(sock, conn.send(h11.EndOfMessage()))
            except BackendError as exc:
                unsent = exc
            try:
                head = _read_head(sock, conn, method)
            except (BackendError, FormatError):
                if unsent is not None:
                    raise unsent from None
                raise
        except BaseException:
            sock.close()
            raise
        if unsent is not None:  # the connection is in the middle of a request: never reused
            head = dataclasses.replace(head, keep_alive=False)
        return Response(self, sock, head, conn.trailing_data[0])


class Response:
    """One upstream response: :attr:`head`, then :meth:`batches` of its body.

    Each batch is a list of memoryview slices of one buffer, valid until the next batch
    is asked for; use them (encrypt, send) before iterating on. :meth:`close` returns the
    connection to the pool if the body was read to its exact end, else closes it.
    """

    def __init__(self, pool: UpstreamPool, sock: socket.socket, head: Head, first: bytes) -> None:
        self.head = head
        self._pool = pool
        self._sock: socket.socket | None = sock
        self._first = first
        self._buf: bytearray | None = None
        self._view = memoryview(b"")
        self._start = self._end = 0
        self._complete = False

    def batches(self) -> Iterator[list[memoryview]]:
        """The body, in batches of whatever has arrived (never waiting for more)."""
        head = self.head
        if head.framing == "length" and head.size == 0:
            self._complete = True
            return
        buf = self._buf = self._pool.buffer()
        self._view = memoryview(buf)
        if len(self._first) > len(buf):  # cannot happen: the head read is smaller
            raise FormatError("upstream response head was followed by too much data")
        self._view[: len(self._first)] = self._first
        self._end = len(self._first)
        if head.framing == "length":
            yield from self._counted(head.size)
        elif head.framing == "chunked":
            yield from _Chunked(self).batches()
        else:
            yield from self._until_close()
        self._complete = True

    def _counted(self, size: int) -> Iterator[list[memoryview]]:
        left = size
        while left:
            if self._start == self._end:
                self._start = 0
                self._end = self._recv(0, min(left, len(self._view)))
                if not self._end:
                    raise BackendError(
                        f"upstream closed its response {left} bytes before its Content-Length"
                    )
            take = min(left, self._end - self._start)
            yield [self._view[self._start : self._start + take]]
            self._start += take
            left -= take

    def _until_close(self) -> Iterator[list[memoryview]]:
        while True:
            if self._start < self._end:
                yield [self._view[self._start : self._end]]
            self._start = 0
            self._end = self._recv(0, len(self._view))
            if not self._end:
                return

    def _recv(self, at: int, size: int) -> int:
        """Receive up to ``size`` bytes into the buffer at ``at``; 0 at EOF."""
        assert self._sock is not None
        try:
            return self._sock.recv_into(self._view[at : at + size])
        except TimeoutError as exc:
            raise BackendError("upstream did not send its response in time") from exc
        except OSError as exc:
            raise BackendError(f"upstream connection failed: {type(exc).__name__}") from exc

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is None:
            return
        # bytes past the end of the response (in the buffer, or after the head when the
        # body was empty) are not the next response's: such a connection is not reused
        rest = self._end - self._start if self._buf is not None else len(self._first)
        if self._buf is not None:
            self._pool.recycle(self._buf)
            self._buf = None
        if self._complete and self.head.keep_alive and not rest:
            self._pool.give_back(sock)
        else:
            sock.close()


class _Chunked:
    """Chunked framing (RFC 9112 section 7.1) decoded from a :class:`Response`'s buffer."""

    def __init__(self, response: Response) -> None:
        self.r = response
        self.left = 0  # bytes of the current chunk's data still to come
        self.crlf = False  # the CRLF after a chunk's data is due
        self.trailer: int | None = None  # bytes of trailer section so far, once in it
        self.done = False

    def batches(self) -> Iterator[list[memoryview]]:
        while not self.done:
            pieces: list[memoryview] = []
            while not self.done and len(pieces) < MAX_BATCH_PIECES and self._step(pieces):
                pass
            if pieces:
                yield pieces
            elif not self.done:
                self._fill()

    def _fill(self) -> None:
        """Receive more after what is buffered; moves a partial line (bounded) to the
        front first when the buffer's tail is full."""
        r = self.r
        if r._start == r._end:
            r._start = r._end = 0
        elif r._end == len(r._view):
            rest = r._end - r._start
            r._view[:rest] = r._view[r._start : r._end]
            r._start, r._end = 0, rest
        got = r._recv(r._end, len(r._view) - r._end)
        if not got:
            raise BackendError("upstream closed its chunked response before its last chunk")
        r._end += got

    def _step(self, pieces: list[memoryview]) -> bool:
        """Decode one element from the buffer; False when that needs more bytes."""
        r = self.r
        avail = r._end - r._start
        if self.left:
            if not avail:
                return False
            take = min(avail, self.left)
            pieces.append(r._view[r._start : r._start + take])
            r._start += take
            self.left -= take
            self.crlf = not self.left
            return True
        if self.crlf:
            if avail < 2:
                if avail and r._view[r._start] != _CRLF[0]:
                    raise FormatError("upstream chunk data is not followed by CRLF")
                return False
            if r._view[r._start : r._start + 2] != _CRLF:
                raise FormatError("upstream chunk data is not followed by CRLF")
            r._start += 2
            self.crlf = False
            return True
        line = self._line(MAX_CHUNK_LINE if self.trailer is None else MAX_TRAILER_BYTES)
        if line is None:
            return False
        if self.trailer is not None:
            self.trailer += len(line) + 2
            if self.trailer > MAX_TRAILER_BYTES:
                raise FormatError(f"upstream chunked trailer exceeds {MAX_TRAILER_BYTES} bytes")
            self.done = not line
            return True
        match = _CHUNK_LINE.fullmatch(line)
        if match is None:
            raise FormatError("upstream sent a malformed chunk-size line")
        size = int(match[1], 16)
        if size:
            self.left = size
        else:
            self.trailer = 0
        return True

    def _line(self, limit: int) -> bytes | None:
        """The next CRLF-terminated line without its CRLF, or None until it is complete;
        ``FormatError`` past ``limit`` bytes."""
        r = self.r
        buf = r._buf
        assert buf is not None
        end = buf.find(_CRLF, r._start, min(r._end, r._start + limit + 2))
        if end < 0:
            if r._end - r._start >= limit + 2:  # the whole window searched: no CRLF in it
                raise FormatError(f"upstream sent a chunked-framing line over {limit} bytes")
            return None
        line = bytes(r._view[r._start : end])
        r._start = end + 2
        return line


def _readable(sock: socket.socket) -> bool:
    return ready_within(sock, select.POLLIN, 0)


def _send(sock: socket.socket, data: bytes | None) -> None:
    if not data:
        return
    try:
        sock.sendall(data)
    except TimeoutError as exc:
        raise BackendError("upstream did not take the request in time") from exc
    except OSError as exc:
        raise BackendError(f"upstream connection failed: {type(exc).__name__}") from exc


def _read_head(sock: socket.socket, conn: h11.Connection, method: bytes) -> Head:
    """Skip 1xx responses, return the final response's head and framing."""
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                try:
                    data = sock.recv(MAX_HEAD_BYTES)
                except TimeoutError as exc:
                    raise BackendError("upstream did not answer in time") from exc
                except OSError as exc:
                    raise BackendError(f"upstream connection failed: {type(exc).__name__}") from exc
                conn.receive_data(data)
            elif isinstance(event, h11.Response):
                return _head(event, method)
            elif not isinstance(event, h11.InformationalResponse):
                raise BackendError("upstream closed the connection without a response")
    except h11.ProtocolError as exc:
        raise FormatError("upstream sent a malformed response head") from exc


def _head(event: h11.Response, method: bytes) -> Head:
    """The body framing of RFC 9112 section 6.3, on headers h11 has validated (one
    Transfer-Encoding, and only chunked; Content-Length values that agree)."""
    headers = list(event.headers)
    names = {name for name, _ in headers}
    connection = b",".join(v for k, v in headers if k == b"connection").lower()
    keep_alive = event.http_version == b"1.1" and b"close" not in {
        token.strip() for token in connection.split(b",")
    }
    if event.status_code in (204, 304) or method == b"HEAD":
        framing, size = "length", 0
    elif b"transfer-encoding" in names:
        framing, size = "chunked", 0
        # chunked wins over a length beside it (and the length is dropped), but a
        # response framed both ways may have been written by either: not reused
        keep_alive = keep_alive and b"content-length" not in names
    elif b"content-length" in names:
        framing, size = "length", int(dict(headers)[b"content-length"])
    else:
        framing, size, keep_alive = "close", 0, False
    return Head(
        status=event.status_code,
        reason=bytes(event.reason),
        headers=headers,
        framing=framing,
        size=size,
        keep_alive=keep_alive,
    )
