"""A loopback TCP relay that throttles downstream bytes (test helper, not product code).

Lets a test make a multi-MiB download last long enough to kill the server behind it in
the middle. When the upstream is down, new client connections are closed at once, which
the client sees as a connection reset, exactly like talking to the dead server directly.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time


class ThrottlingProxy:
    def __init__(self, upstream: tuple[str, int], *, bytes_per_second: int) -> None:
        self.upstream = upstream
        self.rate = bytes_per_second
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._stop = threading.Event()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        #: bytes relayed from the upstream to clients so far
        self.downstream_bytes = 0

    def __enter__(self) -> ThrottlingProxy:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._listener.close()
        with self._lock:
            for s in self._sockets:
                with contextlib.suppress(OSError):
                    s.close()

    def _track(self, s: socket.socket) -> None:
        with self._lock:
            self._sockets.append(s)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self._track(client)
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            self._track(server)
            threading.Thread(target=self._pump, args=(client, server, None), daemon=True).start()
            threading.Thread(
                target=self._pump, args=(server, client, self.rate), daemon=True
            ).start()

    def _pump(self, src: socket.socket, dst: socket.socket, rate: int | None) -> None:
        chunk = 64 << 10
        try:
            while True:
                data = src.recv(chunk)
                if not data:
                    break
                dst.sendall(data)
                if rate:
                    with self._lock:
                        self.downstream_bytes += len(data)
                    time.sleep(len(data) / rate)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
