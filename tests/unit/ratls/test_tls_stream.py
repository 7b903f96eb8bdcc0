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
