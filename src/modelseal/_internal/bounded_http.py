"""Reading HTTP responses from untrusted peers: a byte cap and an overall deadline.

httpx bounds each socket operation (connect, one read), not a whole response: a peer that
sends one byte every 29 s satisfies a 30 s read timeout forever, and ``response.read()``
buffers whatever arrives before anyone can look at its size. Every client of a KBS or a
registry (loader, SDK, ``kbs get``, owner CLI) reads bodies through :func:`read_body` or
:func:`send` instead: the stream is consumed chunk by chunk with a running total and a
monotonic deadline. Memory stays at the cap; time stays at the deadline plus at most one
read, and no single read may wait longer than the time left when the request started.

Compressed bodies are refused, never inflated: one 64 KiB gzip chunk inflates to ~64 MiB
before a cap could look at it. These clients ask for ``Accept-Encoding: identity``.

Errors: a body over its cap or in a refused encoding is :class:`FormatError` (exit 5); a
response still incomplete at the deadline is :class:`TransientError` (exit 75).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Final

import httpx

from modelseal.errors import ConfigError, FormatError, TransientError

__all__ = [
    "ERROR_BODY_BYTES",
    "IDENTITY",
    "Deadline",
    "Reply",
    "read_body",
    "send",
]

#: request headers that keep a peer from compressing its answer
IDENTITY: Final = {"Accept-Encoding": "identity"}
#: error bodies are read this far, then cut: only their short ``detail`` text is used
ERROR_BODY_BYTES: Final = 64 << 10


class Deadline:
    """An overall time budget on the monotonic clock, started at construction."""

    __slots__ = ("_end", "seconds")

    def __init__(self, seconds: float) -> None:
        if not (seconds > 0 and math.isfinite(seconds)):
            raise ConfigError(
                f"a response deadline must be a positive number of seconds: {seconds}"
            )
        self.seconds = seconds
        self._end = time.monotonic() + seconds

    def remaining(self) -> float:
        return self._end - time.monotonic()

    def expired(self) -> bool:
        return self.remaining() <= 0

    def check(self, what: str) -> None:
        """Raise :class:`TransientError` once the budget is spent."""
        if self.expired():
            raise TransientError(f"{what}: no complete answer within {self.seconds:g} s")

    def timeout(self, base: httpx.Timeout) -> httpx.Timeout:
        """``base`` with every socket operation capped at the time left (at least 1 ms)."""
        left = max(self.remaining(), 0.001)

        def cap(value: float | None) -> float:
            return left if value is None else min(value, left)

        return httpx.Timeout(
            connect=cap(base.connect),
            read=cap(base.read),
            write=cap(base.write),
            pool=cap(base.pool),
        )


def _check_encoding(response: httpx.Response, what: str) -> None:
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise FormatError(
            f"{what}: refused a compressed response (Content-Encoding {encoding[:40]!r})"
        )


def read_body(
    response: httpx.Response,
    *,
    limit: int,
    deadline: Deadline,
    what: str,
    truncate: bool = False,
) -> bytes:
    """The body of a streamed ``response``: at most ``limit`` bytes, complete by ``deadline``.

    A longer body raises :class:`FormatError` naming ``what`` and the cap, unless
    ``truncate`` (then the first ``limit`` bytes are returned and the rest is never read:
    an error body, or the head of a blob). Past the deadline: :class:`TransientError`.
    Transport errors other than a timeout caused by the deadline propagate unchanged.
    """
    _check_encoding(response, what)
    declared = response.headers.get("content-length", "")
    if not truncate and declared.isdigit() and int(declared) > limit:
        raise FormatError(f"{what}: response of {int(declared)} bytes exceeds the {limit}-byte cap")
    body = bytearray()
    try:
        # identity only (checked above): iter_bytes decodes nothing, and it also serves a
        # response whose body was loaded up front (mock transports)
        for chunk in response.iter_bytes():
            room = limit - len(body)
            if len(chunk) > room:
                if truncate:
                    body += chunk[:room]
                    break
                raise FormatError(f"{what}: response exceeds the {limit}-byte cap")
            body += chunk
            deadline.check(what)
    except httpx.TimeoutException as exc:
        if deadline.expired():
            raise TransientError(
                f"{what}: no complete answer within {deadline.seconds:g} s"
            ) from exc
        raise
    return bytes(body)


@dataclass(frozen=True)
class Reply:
    """A response whose body was read within its cap and deadline."""

    status_code: int
    headers: httpx.Headers
    content: bytes
    reason_phrase: str


def send(
    client: httpx.Client,
    method: str,
    url: str,
    *,
    limit: int,
    seconds: float,
    what: str,
    upload: bool = False,
    **kwargs: Any,
) -> Reply:
    """One request through ``client`` whose whole exchange ends within ``seconds``.

    A success body (status < 400) may hold ``limit`` bytes (more: :class:`FormatError`); an
    error body is cut at :data:`ERROR_BODY_BYTES`, since only its ``detail`` is used.
    With ``upload`` (a request body that may take long to send) the deadline starts when the
    response headers arrive, and sending is bounded by the client's per-operation timeouts.
    httpx transport errors (refused, reset, a connect or header timeout) propagate for the
    caller's retry policy; ``kwargs`` go to :meth:`httpx.Client.stream`.
    """
    deadline = Deadline(seconds)
    headers = {**IDENTITY, **(kwargs.pop("headers", None) or {})}
    timeout = client.timeout if upload else deadline.timeout(client.timeout)
    try:
        with client.stream(method, url, headers=headers, timeout=timeout, **kwargs) as response:
            if upload:
                deadline = Deadline(seconds)
            ok = response.status_code < 400
            body = read_body(
                response,
                limit=limit if ok else min(limit, ERROR_BODY_BYTES),
                deadline=deadline,
                what=what,
                truncate=not ok,
            )
            return Reply(response.status_code, response.headers, body, response.reason_phrase)
    except httpx.TimeoutException as exc:
        if deadline.expired():
            raise TransientError(
                f"{what}: no complete answer within {deadline.seconds:g} s"
            ) from exc
        raise
