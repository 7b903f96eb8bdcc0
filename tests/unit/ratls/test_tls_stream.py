"""The TLS stream over a non-blocking socket: failures are OSErrors, whatever the timing."""

from __future__ import annotations

import contextlib
import socket
import time

import pytest
from OpenSSL import SSL

from modelseal.ratls.tls import TlsStream, client_context


def test_a_stream_closed_by_another_thread_fails_as_an_oserror() -> None:
    # a relay closes both legs of a connection while the other leg's pump thread is
    # between a would-block recv and its wait: the wait must fail as an OSError (which
    # every caller handles), not as select's ValueError for a closed descriptor
    mine, theirs = socket.socketpair()
    try:
        stream = TlsStream.client(client_context(), mine, 5, None)
        stream.sock.close()
        with pytest.raises(OSError):
            stream._wait(time.monotonic() + 5, read=True)
        with pytest.raises(OSError):
            stream.read(timeout=1)
    finally:
        theirs.close()


def test_a_silent_peer_is_a_timeout() -> None:
    mine, theirs = socket.socketpair()
    try:
        stream = TlsStream.client(client_context(), mine, 5, None)
        with pytest.raises(TimeoutError):
            stream.handshake(timeout=0.2)
    finally:
        stream.close()
        theirs.close()


def test_a_descriptor_above_fd_setsize_can_be_waited_on() -> None:
    # a gateway with over a thousand connections open has descriptors select() cannot
    # take; the stream's waits must still work there
    import fcntl
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, hard), hard))
    mine, theirs = socket.socketpair()
    high = fcntl.fcntl(mine.fileno(), fcntl.F_DUPFD, 1100)
    mine.close()
    sock = socket.socket(fileno=high)
    try:
        assert sock.fileno() >= 1100
        stream = TlsStream.client(client_context(), sock, 5, None)
        with pytest.raises(TimeoutError):  # the silent peer, not select's ValueError
            stream.handshake(timeout=0.2)
    finally:
        sock.close()
        theirs.close()


def _records(data: bytes) -> list[int]:
    """The lengths of the TLS records in ``data`` (5-byte headers, whole records only)."""
    lengths = []
    while len(data) >= 5:
        size = int.from_bytes(data[3:5], "big")
        lengths.append(size)
        data = data[5 + size :]
    return lengths


def test_small_pieces_of_one_write_leave_in_one_record() -> None:
    # a relayed server-sent event is a chunk-size line, the event and a CRLF: encrypted
    # one by one they were three records (and three OpenSSL calls) for a few bytes
    import threading

    from modelseal.crypto.tls_identity import TlsKey

    key = TlsKey()
    now = time.time()
    ctx = key.server_context(key.certificate(extensions=[], not_before=now, not_after=now + 60))
    mine, theirs = socket.socketpair()
    server = TlsStream.server(ctx, mine, 5)
    client = TlsStream.client(client_context(), theirs, 5, None)
    try:
        shaking = threading.Thread(target=server.handshake)
        shaking.start()
        client.handshake()
        shaking.join()
        theirs.setblocking(False)
        tickets = b""  # what the handshake left in flight, for the client's records count
        with contextlib.suppress(BlockingIOError):
            while more := theirs.recv(65536):
                tickets += more
        event = b"data: " + b"t" * 90 + b"\n\n"
        server.write_all([b"%x\r\n" % len(event), memoryview(event), b"\r\n"])
        first = theirs.recv(65536)
        assert len(_records(first)) == 1
        # a large piece still goes out uncopied, the small pieces around it gathered
        big = memoryview(bytes(50_000))
        server.write_all([b"c350\r\n", big, b"\r\n", b"5\r\n", b"hello", b"\r\n"])
        got = b""  # all of it is in the socket's buffer once write_all returns
        with contextlib.suppress(BlockingIOError):
            while more := theirs.recv(1 << 20):
                got += more
        # 50 000 bytes need 4 records of at most 16 KiB; the framing adds at most two
        assert len(_records(got)) <= 6
        client.connection.bio_write(tickets + first + got)
        plain = b""
        with contextlib.suppress(SSL.WantReadError):
            while more := client.connection.recv(1 << 20):
                plain += more
        assert plain == b"62\r\n" + event + b"\r\nc350\r\n" + bytes(big) + b"\r\n5\r\nhello\r\n"
    finally:
        server.close()
        client.close()
