"""URLs in messages: name the endpoint, never a credential that rides in it.

A KBS or registry URL may carry ``user:password@`` or a token in its query string (a
presigned URL); an error message or a log line shows only scheme, host, port and path.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

__all__ = ["display_url"]


def display_url(url: str) -> str:
    """``url`` without userinfo, query and fragment (``?…`` marks a removed query)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<invalid URL>"
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{port}" if port is not None else host
    shown = urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    return shown + ("?…" if parts.query else "")
