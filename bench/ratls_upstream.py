"""The inference-server stand-in of ``ratls_bench``: an ASGI app served by uvicorn.

``GET /bytes/N`` streams N bytes in 64 KiB chunks with a Content-Length (what a model
download or a long generation looks like on the wire); ``GET /healthz`` answers ok. The
same app runs once on plain HTTP (behind the gateway) and once with TLS (the direct
baseline), so both paths serve identical bytes from identical code.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

CHUNK = b"\xa5" * 65536


async def app(
    scope: dict[str, Any],
    receive: Callable[[], Awaitable[dict[str, Any]]],
    send: Callable[[dict[str, Any]], Awaitable[None]],
) -> None:
    if scope["type"] != "http":
        return
    path: str = scope["path"]
    size = int(path.rsplit("/", 1)[1]) if path.startswith("/bytes/") else 2
    headers = [(b"content-length", str(size).encode()), (b"content-type", b"text/plain")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    if not path.startswith("/bytes/"):
        await send({"type": "http.response.body", "body": b"ok"})
        return
    left = size
    while left > len(CHUNK):
        await send({"type": "http.response.body", "body": CHUNK, "more_body": True})
        left -= len(CHUNK)
    await send({"type": "http.response.body", "body": CHUNK[:left]})
