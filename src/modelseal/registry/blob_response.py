"""A blob byte range sent with the ASGI zero-copy extension (``sendfile``), when offered.

The server advertises ``http.response.zerocopysend`` in the scope (``registry.zerocopy``
does for uvicorn on plain TCP); the body then never passes through Python. Where it is not
offered (TLS, another server, S3-backed stores) the registry streams as before.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, BinaryIO, Final

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

__all__ = ["EXTENSION", "ZeroCopyFileResponse", "offers_zero_copy"]

EXTENSION: Final = "http.response.zerocopysend"


def offers_zero_copy(scope: Mapping[str, Any]) -> bool:
    """Whether the server handling ``scope`` accepts ``http.response.zerocopysend``."""
    return EXTENSION in (scope.get("extensions") or {})


class ZeroCopyFileResponse(Response):
    """Bytes ``[start, end)`` of an open file; the response owns (and closes) the file."""

    media_type = "application/octet-stream"

    def __init__(
        self, file: BinaryIO, start: int, end: int, *, status_code: int, headers: dict[str, str]
    ) -> None:
        super().__init__(status_code=status_code, headers=headers)
        self.file = file
        self.start = start
        self.end = end

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": self.status_code,
                    "headers": self.raw_headers,
                }
            )
            await send(
                {
                    "type": EXTENSION,
                    "file": self.file,
                    "offset": self.start,
                    "count": self.end - self.start,
                    "more_body": False,
                }
            )
        finally:
            self.file.close()
