"""Test helpers for attested TLS: a recording upstream, an in-process gateway, a relay.

The upstream is a real HTTP/1.1 server on 127.0.0.1 that records every request it
receives (so a test can assert that a refused client never reached it); the relay is a
real TLS-terminating man in the middle with its own key.
"""

from __future__ import annotations

import http.server
import json
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from OpenSSL import SSL

from modelseal.crypto.tls_identity import TlsKey
from modelseal.policy import ReleasePolicy, parse_policy
from modelseal.ratls.gateway import Gateway, GatewaySettings
from modelseal.ratls.identity import AttestedIdentity
from modelseal.ratls.tls import TlsStream, client_context
from modelseal.tee import registry
from modelseal.tee.mock_tdx.attester import Attester as MockTdxAttester

MODEL = "sha256:" + "5e" * 32


@dataclass
class Upstream:
    """A recording inference server; ``/sse`` waits for ``proceed`` between events."""

    received: list[tuple[str, str, bytes]] = field(default_factory=list)
    proceed: threading.Event = field(default_factory=threading.Event)
    #: True when ``/sse`` gave up waiting for ``proceed`` (its first event never reached
    #: the client while the response was still open: someone buffered it)
    sse_gave_up: bool = False
    server: http.server.ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"


def _handler(up: Upstream) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _body(self) -> bytes:
            if self.headers.get("transfer-encoding", "").lower() == "chunked":
                out = bytearray()
                while True:
                    size = int(self.rfile.readline().split(b";")[0], 16)
                    chunk = self.rfile.read(size + 2)[:size]
                    if size == 0:
                        return bytes(out)
                    out += chunk
            return self.rfile.read(int(self.headers.get("content-length", 0)))

        def do_GET(self) -> None:
            up.received.append(("GET", self.path, b""))
            if self.path.startswith("/sse"):
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("transfer-encoding", "chunked")
                self.end_headers()
                for i in range(3):
                    self._chunk(f"data: event {i}\n\n".encode())
                    if i == 0 and not up.proceed.wait(10):
                        up.sse_gave_up = True
                self._chunk(b"")
                return
            if self.path.startswith("/big/"):
                total = int(self.path.split("/")[2])
                self.send_response(200)
                self.send_header("content-length", str(total))
                self.end_headers()
                block = b"\xa5" * (1 << 20)
                left = total
                while left:
                    n = min(left, len(block))
                    self.wfile.write(block[:n])
                    left -= n
                return
            self._json(200, {"path": self.path})

        def do_POST(self) -> None:
            body = self._body()
            up.received.append(("POST", self.path, body))
            if self.path == "/v1/chat/completions":
                self._chat(json.loads(body))
                return
            self._json(200, {"echo": body.decode("utf-8", "replace"), "bytes": len(body)})

        def _chat(self, request: dict[str, Any]) -> None:
            """An OpenAI-compatible chat completion: the reply spells the last message
            backwards, as one JSON body or as server-sent chunks."""
            reply = request["messages"][-1]["content"][::-1]
            base = {"id": "c1", "created": 0, "model": request["model"]}
            if not request.get("stream"):
                message = {"role": "assistant", "content": reply}
                self._json(200, {**base, "object": "chat.completion", "choices": [
                    {"index": 0, "message": message, "finish_reason": "stop"}]})  # fmt: skip
                return
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            for word in reply.split(" "):
                delta = {"index": 0, "delta": {"content": word + " "}, "finish_reason": None}
                chunk = {**base, "object": "chat.completion.chunk", "choices": [delta]}
                self._chunk(f"data: {json.dumps(chunk)}\n\n".encode())
            self._chunk(b"data: [DONE]\n\n")
            self._chunk(b"")

        def _chunk(self, data: bytes) -> None:
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

        def _json(self, status: int, value: Any) -> None:
            out = json.dumps(value).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

    return Handler


def wait_listening(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Wait until a gateway process accepts on ``port``; its log is the failure message."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(log.read_text())
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("gateway did not start: " + log.read_text())


@contextmanager
def upstream_server() -> Iterator[Upstream]:
    up = Upstream()
    up.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(up))
    up.server.daemon_threads = True
    threading.Thread(target=up.server.serve_forever, daemon=True).start()
    try:
        yield up
    finally:
        up.proceed.set()
        up.server.shutdown()
        up.server.server_close()


@contextmanager
def running_gateway(
    identity: AttestedIdentity, upstream: str, **settings: Any
) -> Iterator[Gateway]:
    gw = Gateway(GatewaySettings("127.0.0.1", 0, upstream, **settings), identity)
    thread = threading.Thread(target=gw.serve_forever, daemon=True)
    thread.start()
    try:
        yield gw
    finally:
        gw.shutdown()
        thread.join(10)


def tls_connect(port: int) -> TlsStream:
    """A raw TLS client connection to a gateway on 127.0.0.1, handshake done (no checks)."""
    sock = socket.create_connection(("127.0.0.1", port))
    stream = TlsStream.client(client_context(), sock, 10, None)
    stream.handshake()
    return stream


def tls_exchange(port: int, request: bytes) -> bytes:
    """Raw request bytes over a new TLS connection; all the gateway sends until it closes."""
    stream = tls_connect(port)
    try:
        stream.write(request)
        answer = b""
        while chunk := stream.read():
            answer += chunk
    finally:
        stream.close()
    return answer


def mock_identity(ca_dir: Path, **kwargs: Any) -> tuple[AttestedIdentity, MockTdxAttester]:
    attester = registry.attester_for("mock-tdx", ca_dir=str(ca_dir))
    assert isinstance(attester, MockTdxAttester)
    kwargs.setdefault("models", [MODEL])
    return AttestedIdentity("mock-tdx", attester, **kwargs), attester


def policy_for(attester: MockTdxAttester, **changes: Any) -> ReleasePolicy:
    doc: dict[str, Any] = {
        "apiVersion": "modelseal/v1",
        "kind": "ReleasePolicy",
        "tee": ["mock-tdx"],
        "measurements": [{"mr_td": attester.measurements["mr_td"]}],
        "model_digest": MODEL,
    }
    doc.update(changes)
    return parse_policy(doc)


def last_byte_changed(hex_text: str) -> str:
    """The same full-length hex value with only its last byte different."""
    return hex_text[:-2] + f"{int(hex_text[-2:], 16) ^ 0x01:02x}"


class Relay:
    """A TLS-terminating relay with its own key: accepts TLS, opens its own TLS connection
    to the gateway and pumps plaintext both ways. ``copy_evidence`` puts the gateway's
    certificate extensions (its evidence) into the relay's own certificate."""

    def __init__(self, gateway_port: int, certificate: bytes, key: TlsKey) -> None:
        self.gateway_port = gateway_port
        self.context = key.server_context(certificate)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.forwarded = 0
        self._stop = threading.Event()

    def __enter__(self) -> Relay:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.listener.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        down = TlsStream.server(self.context, sock, 10)
        up_sock = socket.create_connection(("127.0.0.1", self.gateway_port))
        up = TlsStream.client(client_context(), up_sock, 10, None)
        try:
            down.handshake()
            up.handshake()
            threading.Thread(target=self._pump, args=(up, down), daemon=True).start()
            self._pump(down, up)
        except (SSL.Error, OSError, TimeoutError):
            pass
        finally:
            down.close()
            up.close()

    def _pump(self, src: TlsStream, dst: TlsStream) -> None:
        try:
            while data := src.read():
                self.forwarded += len(data)
                dst.write(data)
        except (SSL.Error, OSError, TimeoutError):
            pass


def relay_certificate(key: TlsKey, copied: bytes | None) -> bytes:
    from modelseal.ratls.wire import OID_TAGGED_EVIDENCE

    extensions = [(OID_TAGGED_EVIDENCE, copied)] if copied is not None else []
    import time

    now = time.time()
    return key.certificate(extensions=extensions, not_before=now - 60, not_after=now + 3600)


@contextmanager
def served_gateway(work: Path) -> Iterator[dict[str, Any]]:
    """A recording upstream behind a mock-tdx gateway: what the client tests talk to."""
    identity, attester = mock_identity(work / "ca")
    with upstream_server() as up, running_gateway(identity, up.url) as gw:
        yield {
            "upstream": up,
            "attester": attester,
            "url": f"https://127.0.0.1:{gw.port}",
            "base_url": f"https://127.0.0.1:{gw.port}/v1",
            "port": gw.port,
            "options": {"mock_tdx_root": str(attester.ca.root_pem_path)},
        }


class RawUpstream:
    """A raw HTTP/1.1 peer on 127.0.0.1 for framing tests: each request (head read, a
    Content-Length body drained) is answered with the bytes ``script(head)`` returns, sent
    piece by piece with a pause between, so the pieces arrive apart. A ``None`` piece
    closes the connection there; otherwise it stays open for the next request.
    ``connections`` counts the connections accepted."""

    def __init__(self, script: Any, pause: float = 0.005) -> None:
        self.script = script
        self.pause = pause
        self.connections = 0
        self.heads: list[bytes] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"

    def __enter__(self) -> RawUpstream:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        import time

        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        data = b""
        try:
            while True:
                while b"\r\n\r\n" not in data:
                    more = sock.recv(65536)
                    if not more:
                        return
                    data += more
                head, data = data.split(b"\r\n\r\n", 1)
                self.heads.append(head)
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        while len(data) < int(value):
                            data += sock.recv(65536)
                        data = data[int(value) :]
                for piece in self.script(head):
                    if piece is None:
                        return
                    sock.sendall(piece)
                    time.sleep(self.pause)
        except OSError:
            pass
        finally:
            sock.close()


class Pieces:
    """A connection that hands out scripted pieces, at most one per read, then EOF (or,
    with ``endless``, the same filler forever); counts what was read and whether it was
    closed or kept for reuse."""

    def __init__(self, pieces: list[bytes], endless: bytes = b"") -> None:
        self.pieces = list(pieces)
        self.endless = endless
        self.taken = 0
        self.closed = False

    def recv_into(self, view: memoryview) -> int:
        if not self.pieces:
            if not self.endless:
                return 0
            self.pieces.append(self.endless * (len(view) // len(self.endless) + 1))
        piece = self.pieces[0]
        n = min(len(view), len(piece))
        view[:n] = piece[:n]
        if n < len(piece):
            self.pieces[0] = piece[n:]
        else:
            self.pieces.pop(0)
        self.taken += n
        return n

    def close(self) -> None:
        self.closed = True
