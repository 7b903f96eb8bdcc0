"""TLS contexts that read their CA store on the first handshake, not when they are made.

Reading a CA store costs the loader 40-90 ms (the system bundle for the registry, certifi's
for the KBS client), on an initContainer's critical path. A load over plain HTTP (an
in-cluster registry, a loopback KBS) never needs one; over HTTPS the cost moves to the
first connection, where it was going to be paid anyway. An explicit CA bundle file is small
and is still read at once, so a wrong path fails before anything is downloaded.
"""

from __future__ import annotations

import ssl
import sys
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["certifi_trust", "system_trust"]


class _LazyTrustContext(ssl.SSLContext):
    """A verifying client context (hostname + chain) whose CAs load before the first wrap."""

    _trust_loader: Callable[[ssl.SSLContext], None] | None
    _trust_lock: threading.Lock

    def _ensure_trust(self) -> None:
        with self._trust_lock:
            if self._trust_loader is not None:
                self._trust_loader(self)  # raises (and is retried next time) if it fails
                self._trust_loader = None

    def wrap_socket(self, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        self._ensure_trust()
        return super().wrap_socket(*args, **kwargs)

    def wrap_bio(self, *args: Any, **kwargs: Any) -> ssl.SSLObject:
        self._ensure_trust()
        return super().wrap_bio(*args, **kwargs)


def _lazy(loader: Callable[[ssl.SSLContext], None]) -> ssl.SSLContext:
    ctx = _LazyTrustContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED + check_hostname
    if sys.version_info >= (3, 13):  # what create_default_context() adds there
        ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN | ssl.VERIFY_X509_STRICT
    ctx._trust_loader = loader
    ctx._trust_lock = threading.Lock()
    return ctx


def system_trust() -> ssl.SSLContext:
    """Like ``ssl.create_default_context()``: the platform's CA store, read on first use."""
    return _lazy(lambda ctx: ctx.load_default_certs(ssl.Purpose.SERVER_AUTH))


def certifi_trust() -> ssl.SSLContext:
    """Like httpx's ``verify=True``: certifi's CA bundle, read on first use."""

    def load(ctx: ssl.SSLContext) -> None:
        import certifi

        ctx.load_verify_locations(cafile=certifi.where())

    return _lazy(load)
