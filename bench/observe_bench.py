"""CPU per request of the HTTP edge's observer: request id, latency histogram, access line.

Run: ``python -m bench observe_bench`` (rewrites the "HTTP edge: metrics and request ids"
section of docs/benchmarks.md). The observer wraps a bare ASGI app that answers at once, so
the difference is the observer's own cost: with the access line off (the KBS at its default
``info`` level, where the line is at debug), and on, in text and JSON, written to /dev/null.
Times are the best of 5 repeats of a timed loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import platform
import sys
import time
from typing import Any

from bench.report import write_section
from modelseal._internal.http_edge import RequestObserver
from modelseal._internal.logs import configure_logging
from modelseal._internal.metrics import HTTP_REQUEST_SECONDS

N = 20_000


class _Route:
    path = "/kbs/v0/resource/{path:path}"


async def _bare(scope: dict[str, Any], receive: Any, send: Any) -> None:
    scope["route"] = _Route
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


async def _send(_message: Any) -> None:
    return None


async def _receive() -> dict[str, Any]:
    return {"type": "http.request"}


def _scope() -> dict[str, Any]:
    return {
        "type": "http",
        "method": "GET",
        "path": "/kbs/v0/resource/models/demo/v1",
        "headers": [(b"host", b"kbs"), (b"x-request-id", b"bench-request-1")],
    }


async def _loop(app: Any, n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        await app(_scope(), _receive, _send)
    return (time.perf_counter() - started) / n * 1e6


def _best(app: Any) -> float:
    asyncio.run(_loop(app, N // 10))
    return min(asyncio.run(_loop(app, N)) for _ in range(5))


def main() -> None:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level, sys.stderr)
    sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - restored below
    try:
        bare = _best(_bare)
        rows = []
        for label, fmt, level in (
            ("access line off (KBS default)", "text", logging.INFO),
            ("access line on, text", "text", logging.DEBUG),
            ("access line on, JSON", "json", logging.DEBUG),
        ):
            configure_logging(fmt, logging.WARNING)
            logging.getLogger("modelseal").setLevel(level)
            observer = RequestObserver(_bare, "bench", access_level=logging.DEBUG)
            rows.append((label, _best(observer) - bare))
        child = HTTP_REQUEST_SECONDS.labels("bench", "/x", "GET", "2xx")
        started = time.perf_counter()
        for _ in range(N):
            child.observe(0.001)
        observe_only = (time.perf_counter() - started) / N * 1e6
    finally:
        sys.stderr.close()
        sys.stderr = saved[2]
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
    table = "\n".join(f"| {label} | {cost:.1f} |" for label, cost in rows)
    body = f"""\
`python -m bench observe_bench` ({platform.python_version()}, {os.cpu_count()} CPUs, shared
machine). CPU the `RequestObserver` middleware adds to one request (request id, latency
histogram, access line to /dev/null), over a bare ASGI app ({bare:.1f} us per call); best of
5 loops of {N:,} requests. One histogram observation alone: {observe_only:.1f} us.

| Observer | us per request |
| --- | --- |
{table}

A release is three requests and about 3 ms of server CPU (the KBS section above): the
metrics and the request id add about {3 * rows[0][1] / 1000:.2f} ms to it, an access line per
request about {3 * rows[1][1] / 1000:.2f} ms more (text), which is why the KBS writes that line
at debug level and logs each RCAR outcome at info instead.
"""
    write_section("HTTP edge: metrics and request ids", body)
    print(body)


if __name__ == "__main__":
    main()
