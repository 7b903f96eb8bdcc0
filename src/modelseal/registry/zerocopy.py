"""Zero-copy blob bodies: the ASGI ``http.response.zerocopysend`` extension for uvicorn.

Streaming a blob through Python costs the registry two copies per byte (``pread`` into a
fresh ``bytes``, then ``send`` into the socket): about 0.6 s of CPU per GiB, on the same
cores the loaders decrypting those bytes need. ``sendfile(2)`` hands page-cache pages to the
socket instead (~0.07 s/GiB). uvicorn does not implement the standard ASGI extension
(https://asgi.readthedocs.io/en/latest/extensions.html#zero-copy-send), so this module adds
it to uvicorn's httptools protocol for plain-TCP connections:

* the scope of every plain-HTTP request advertises ``http.response.zerocopysend``;
* the app sends ``http.response.start`` (with ``Content-Length``), then one or more
  ``{"type": "http.response.zerocopysend", "file": f, "offset": o, "count": n,
  "more_body": bool}`` messages; the file's bytes go out with ``loop.sendfile``;
* a file shorter than announced aborts the connection (the client sees a truncated body and
  its ranged retry or integrity check takes over), as a failing stream does.

TLS connections never advertise the extension (the kernel cannot encrypt), and neither does
a uvicorn whose request cycle lacks what this relies on (:func:`supported`): the app then
streams as before. ``tests/unit/registry/test_zerocopy.py`` pins that the pinned uvicorn
range keeps the fast path on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from functools import partial
from typing import Any, BinaryIO, Final

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from modelseal.registry.blob_response import EXTENSION, offers_zero_copy

__all__ = ["ZeroCopyHttpToolsProtocol", "supported"]

log = logging.getLogger(__name__)

_Scope = MutableMapping[str, Any]
_Message = MutableMapping[str, Any]
_Send = Callable[[_Message], Awaitable[None]]
_Receive = Callable[[], Awaitable[_Message]]
_App = Callable[[_Scope, _Receive, _Send], Awaitable[None]]

#: request-cycle attributes the extension reads or balances (uvicorn 0.30 - 0.5x)
_CYCLE_ATTRIBUTES: Final = (
    "transport",
    "response_started",
    "response_complete",
    "expected_content_length",
    "chunked_encoding",
    "disconnected",
)


def supported() -> bool:
    """True when this uvicorn's request cycle has everything the extension relies on."""
    init = getattr(RequestResponseCycle, "__init__", None)
    names = getattr(getattr(init, "__code__", None), "co_names", ())
    return all(name in names for name in _CYCLE_ATTRIBUTES) and hasattr(
        HttpToolsProtocol, "_start_asgi_task"
    )


class ZeroCopyHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol plus the zero-copy send extension on plain TCP."""

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self.scheme == "http":
            self.scope["extensions"] = {EXTENSION: {}}

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        if offers_zero_copy(cycle.scope):
            app = partial(_with_zero_copy, app, cycle)
        super()._start_asgi_task(cycle, app)


async def _with_zero_copy(
    app: _App, cycle: RequestResponseCycle, scope: _Scope, receive: _Receive, send: _Send
) -> None:
    async def send_zero_copy(message: _Message) -> None:
        if message["type"] != EXTENSION:
            await send(message)
            return
        await _send_file(cycle, send, message)

    await app(scope, receive, send_zero_copy)


async def _send_file(cycle: RequestResponseCycle, send: _Send, message: _Message) -> None:
    if cycle.disconnected or cycle.transport.is_closing():
        return  # the client went away (uvicorn drops later messages the same way)
    if not cycle.response_started or cycle.response_complete:
        raise RuntimeError(f"{EXTENSION} outside a started, unfinished response")
    if cycle.chunked_encoding is not False:
        raise RuntimeError(f"{EXTENSION} needs a Content-Length response")
    file: BinaryIO = message["file"]
    offset: int = message.get("offset") or 0
    count: int = message["count"]
    more_body = bool(message.get("more_body", False))
    if count > cycle.expected_content_length:
        raise RuntimeError("Response content longer than Content-Length")
    if count:
        try:
            sent = await asyncio.get_running_loop().sendfile(
                cycle.transport, file, offset, count, fallback=True
            )
        except (ConnectionError, RuntimeError) as exc:
            # ConnectionError: the client hung up mid-body (a cancelled load, a killed pod);
            # RuntimeError: asyncio refusing a transport that is already closing. Routine.
            if isinstance(exc, RuntimeError) and not cycle.transport.is_closing():
                raise
            log.debug("zero-copy send ended by the client: %s", type(exc).__name__)
            cycle.transport.close()
            return
        if sent != count:
            # the file shrank under us: never pad, never pretend; drop the connection
            log.warning("zero-copy send stopped after %d of %d bytes", sent, count)
            cycle.transport.close()
            raise OSError(f"file ended after {sent} of {count} bytes")
        cycle.expected_content_length -= count
    if not more_body:
        await send({"type": "http.response.body", "body": b"", "more_body": False})
