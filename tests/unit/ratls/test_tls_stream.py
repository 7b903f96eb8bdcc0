"""The TLS stream over a non-blocking socket: failures are OSErrors, whatever the timing."""

from __future__ import annotations

import socket
import time

import pytest

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
