"""The gateway's upstream body framing: exact bodies whatever the read boundaries, typed
errors and bounded reads for an upstream that lies about lengths or sends garbage."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from modelseal.errors import BackendError, FormatError
from modelseal.ratls.upstream import (
    BUFFER_SIZE,
    MAX_BATCH_PIECES,
    MAX_CHUNK_LINE,
    MAX_TRAILER_BYTES,
    Head,
    Response,
    UpstreamPool,
)
from tests.ratls_helpers import Pieces


def _pool() -> UpstreamPool:
    return UpstreamPool("127.0.0.1", 1, connect_timeout=1, io_timeout=1, max_idle=4)


def _head(framing: str, size: int = 0, keep_alive: bool = True) -> Head:
    return Head(200, b"OK", [], framing, size, keep_alive)


def _read(framing: str, pieces: list[bytes], *, size: int = 0, first: bytes = b"") -> bytes:
    """The body as the gateway would relay it; ``FormatError``/``BackendError`` raised."""
    sock = Pieces(pieces)
    response = Response(_pool(), sock, _head(framing, size), first)  # type: ignore[arg-type]
    try:
        return b"".join(bytes(p) for batch in response.batches() for p in batch)
    finally:
        response.close()


CHUNKED = (
    b"5\r\nhello\r\n"
    b"1;name=value;other\r\n \r\n"
    b"1A  \r\n" + bytes(range(26)) + b"\r\n"
    b"00010\r\n" + b"x" * 16 + b"\r\n"
    b"0\r\nx-trailer: dropped\r\nx-other: too\r\n\r\n"
)
DECODED = b"hello" + b" " + bytes(range(26)) + b"x" * 16


def test_chunked_body_is_exact_at_every_read_boundary() -> None:
    assert _read("chunked", [CHUNKED]) == DECODED
    assert _read("chunked", [bytes([b]) for b in CHUNKED]) == DECODED
    for cut in range(1, len(CHUNKED)):
        for first in (b"", CHUNKED[: cut // 2]):
            rest = CHUNKED[len(first) :]
            at = cut - len(first)
            pieces = [rest[:at], rest[at:]] if at > 0 else [rest]
            assert _read("chunked", pieces, first=first) == DECODED, cut


def test_chunked_pieces_come_as_they_arrive() -> None:
    # what has arrived is handed on at once: the first event does not wait for the second
    sock = Pieces([b"7\r\nevent 0\r\n", b"7\r\nevent 1\r\n0\r\n\r\n"])
    response = Response(_pool(), sock, _head("chunked"), b"")  # type: ignore[arg-type]
    batches = response.batches()
    assert [bytes(p) for p in next(batches)] == [b"event 0"]
    assert sock.taken == 12
    assert [bytes(p) for p in next(batches)] == [b"event 1"]
    assert list(batches) == []
    response.close()
    assert not sock.closed  # ended exactly where its framing said: reused


def test_a_chunk_larger_than_the_buffer_passes_in_pieces() -> None:
    data = bytes(range(256)) * (BUFFER_SIZE // 128 + 3)
    wire = b"%x\r\n" % len(data) + data + b"\r\n0\r\n\r\n"
    step = 300_001
    assert _read("chunked", [wire[i : i + step] for i in range(0, len(wire), step)]) == data


def test_content_length_body_and_reuse() -> None:
    body = bytes(range(256)) * 5000
    pieces = [body[i : i + 77_777] for i in range(1000, len(body), 77_777)]
    assert _read("length", pieces, size=len(body), first=body[:1000]) == body
    sock = Pieces([b"abc"])
    response = Response(_pool(), sock, _head("length", 3), b"")  # type: ignore[arg-type]
    assert b"".join(bytes(p) for b in response.batches() for p in b) == b"abc"
    response.close()
    assert not sock.closed


def test_until_close_body() -> None:
    sock = Pieces([b"a" * 10, b"b" * 5])
    response = Response(_pool(), sock, _head("close", keep_alive=False), b"xy")  # type: ignore[arg-type]
    assert b"".join(bytes(p) for b in response.batches() for p in b) == b"xy" + b"a" * 10 + b"b" * 5
    response.close()
    assert sock.closed


def test_an_upstream_that_sends_less_than_its_content_length() -> None:
    with pytest.raises(BackendError, match="50 bytes before its Content-Length"):
        _read("length", [b"x" * 50], size=100)


def test_an_upstream_that_sends_more_than_its_content_length() -> None:
    sock = Pieces([b"x" * 150])
    response = Response(_pool(), sock, _head("length", 100), b"")  # type: ignore[arg-type]
    assert sum(len(p) for b in response.batches() for p in b) == 100
    response.close()
    sock2 = Pieces([])
    response = Response(_pool(), sock2, _head("length", 5), b"12345678")  # type: ignore[arg-type]
    assert b"".join(bytes(p) for b in response.batches() for p in b) == b"12345"
    response.close()
    # the surplus is never relayed, and a connection with bytes left over is not reused
    assert sock2.closed


@pytest.mark.parametrize(
    ("wire", "error", "message"),
    [
        (b"zz\r\nhello\r\n0\r\n\r\n", FormatError, "malformed chunk-size"),
        (b"-5\r\nhello\r\n0\r\n\r\n", FormatError, "malformed chunk-size"),
        (b" 5\r\nhello\r\n0\r\n\r\n", FormatError, "malformed chunk-size"),
        (b"\r\nhello\r\n0\r\n\r\n", FormatError, "malformed chunk-size"),
        (b"1" * 17 + b"\r\nx\r\n", FormatError, "malformed chunk-size"),
        (b"5\nhello\r\n0\r\n\r\n", FormatError, "malformed chunk-size"),
        (b"5;a\rb\r\nhello\r\n0\r\n\r\n", FormatError, "malformed chunk-size"),
        (b"5\r\nhelloXX0\r\n\r\n", FormatError, "not followed by CRLF"),
        (b"5\r\nhello\rX0\r\n\r\n", FormatError, "not followed by CRLF"),
        (b"5\r\nhello\n0\r\n\r\n", FormatError, "not followed by CRLF"),
        (b"5\r\nhel", BackendError, "before its last chunk"),
        (b"5\r\nhello\r\n", BackendError, "before its last chunk"),
        (b"5\r\nhello\r\n0\r\nx-trailer: a\r\n", BackendError, "before its last chunk"),
        (b"", BackendError, "before its last chunk"),
    ],
)
def test_malformed_chunked_framing_is_a_typed_error(
    wire: bytes, error: type[Exception], message: str
) -> None:
    for pieces in ([wire], [bytes([b]) for b in wire]):
        with pytest.raises(error, match=message) as caught:
            _read("chunked", pieces)
        # the message never quotes the response's bytes
        assert "hello" not in str(caught.value)


def _hostile(endless: bytes, prefix: bytes = b"") -> tuple[Pieces, Exception]:
    sock = Pieces([prefix] if prefix else [], endless=endless)
    response = Response(_pool(), sock, _head("chunked"), b"")  # type: ignore[arg-type]
    with pytest.raises(FormatError) as caught:
        for _ in response.batches():
            pass
    response.close()
    assert sock.closed
    return sock, caught.value


def test_an_endless_chunk_size_line_is_cut_off_with_bounded_reads() -> None:
    sock, error = _hostile(b"1")
    assert "chunk-size" in str(error) or f"over {MAX_CHUNK_LINE}" in str(error)
    assert sock.taken <= BUFFER_SIZE
    sock, error = _hostile(b"a", prefix=b"5;")
    assert f"over {MAX_CHUNK_LINE} bytes" in str(error)
    assert sock.taken <= BUFFER_SIZE


def test_a_chunk_size_line_at_the_limit_is_accepted() -> None:
    line = b"3;" + b"e" * (MAX_CHUNK_LINE - 2)
    assert len(line) == MAX_CHUNK_LINE
    assert _read("chunked", [line + b"\r\nabc\r\n0\r\n\r\n"]) == b"abc"
    with pytest.raises(FormatError, match="over"):
        _read("chunked", [line + b"e\r\nabc\r\n0\r\n\r\n"])


def test_an_endless_trailer_is_cut_off_with_bounded_reads() -> None:
    sock, error = _hostile(b"x-t: 1\r\n", prefix=b"0\r\n")
    assert f"trailer exceeds {MAX_TRAILER_BYTES}" in str(error)
    assert sock.taken <= MAX_TRAILER_BYTES + BUFFER_SIZE
    sock, error = _hostile(b"t", prefix=b"0\r\n")
    assert f"over {MAX_TRAILER_BYTES} bytes" in str(error)


class EarlyAnswer(Pieces):
    """A connection whose peer answered after ``accept`` bytes of the request and closed:
    sending more fails, its answer can still be read."""

    def __init__(self, answer: bytes, accept: int) -> None:
        super().__init__([answer])
        self.accept = accept

    def sendall(self, data: bytes) -> None:
        self.accept -= len(data)
        if self.accept < 0:
            raise BrokenPipeError(32, "Broken pipe")

    def recv(self, size: int) -> bytes:
        view = memoryview(bytearray(size))
        return bytes(view[: self.recv_into(view)])


def test_an_answer_sent_before_the_whole_request_is_still_relayed() -> None:
    answer = b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 8\r\n\r\ntoo big!"
    sock = EarlyAnswer(answer, accept=300)
    pool = _pool()
    pool.take = lambda: sock  # type: ignore[method-assign]
    headers = [(b"host", b"up"), (b"content-length", b"1000000")]
    response = pool.request(b"POST", b"/upload", headers, [b"x" * 1000] * 1000)
    assert response.head.status == 413
    assert b"".join(bytes(p) for b in response.batches() for p in b) == b"too big!"
    response.close()
    assert sock.closed  # mid-request: never reused
    # no answer at all: the failed send is the error
    pool.take = lambda: EarlyAnswer(b"", accept=300)  # type: ignore[method-assign]
    with pytest.raises(BackendError, match="BrokenPipeError"):
        pool.request(b"POST", b"/upload", headers, [b"x" * 1000] * 1000)


def test_an_error_of_the_client_body_passes_through_unchanged() -> None:
    sock = EarlyAnswer(b"", accept=1 << 30)
    pool = _pool()
    pool.take = lambda: sock  # type: ignore[method-assign]

    def body() -> Iterator[bytes]:
        yield b"x"
        raise TimeoutError("client too slow")

    with pytest.raises(TimeoutError, match="client too slow"):
        pool.request(b"POST", b"/", [(b"host", b"up"), (b"content-length", b"5")], body())
    assert sock.closed


@pytest.mark.parametrize("short", range(12))
def test_framing_that_straddles_the_end_of_the_buffer(short: int) -> None:
    # the first read fills the buffer exactly; the framing after a big chunk's data (its
    # CRLF, the next chunk-size line, the last chunk, the trailer) is cut at every offset
    # and must be carried to the front of the buffer for the next read
    tail = b"\r\n5;x\r\nhello\r\n0\r\nt: 1\r\n\r\n"
    n = BUFFER_SIZE - len(b"%x\r\n" % BUFFER_SIZE) - short
    data = bytes(range(256)) * (n // 256) + b"\x01" * (n % 256)
    wire = b"%x\r\n" % n + data + tail
    assert _read("chunked", [wire]) == data + b"hello"


def test_bytes_after_an_empty_body_keep_the_connection_from_reuse() -> None:
    # a HEAD or 204 answer followed by bytes (a body it must not have): never relayed, and
    # the connection is not reused, or those bytes would be read as the next response
    for first, reused in ((b"", True), (b"HTTP/1.1 200 OK\r\n\r\n", False)):
        sock = Pieces([])
        response = Response(_pool(), sock, _head("length", 0), first)  # type: ignore[arg-type]
        assert list(response.batches()) == []
        response.close()
        assert sock.closed is not reused


def test_a_buffer_of_tiny_chunks_comes_in_batches_of_bounded_length() -> None:
    # 1 MiB of one-byte chunks is 174 762 slices of the buffer: handed on as one batch,
    # that was about 35 MB of Python objects per connection, and three records each
    tiny = b"1\r\na\r\n" * (BUFFER_SIZE // 6)
    response = Response(_pool(), Pieces([tiny + b"0\r\n\r\n"]), _head("chunked"), b"")  # type: ignore[arg-type]
    got = 0
    try:
        for batch in response.batches():
            assert len(batch) <= MAX_BATCH_PIECES
            got += sum(len(piece) for piece in batch)
    finally:
        response.close()
    assert got == BUFFER_SIZE // 6


def test_a_connection_given_back_after_the_pool_closed_is_closed() -> None:
    # the gateway closes its pool when it stops serving, while a response may still be
    # in flight on a daemon thread: its connection must not be kept in a closed pool
    import socket

    pool = _pool()
    mine, theirs = socket.socketpair()
    try:
        pool.close()
        pool.give_back(mine)
        assert mine.fileno() == -1
        assert pool._idle == []
    finally:
        mine.close()
        theirs.close()
