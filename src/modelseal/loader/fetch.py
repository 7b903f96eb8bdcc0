"""HTTP fetching for the loader: ranged reads that resume, bounded retries with jitter.

Only transient failures are retried (connection reset/refused, timeouts, truncated bodies,
HTTP 5xx and 429); a retry resumes with ``Range`` from the last byte received, so a registry
restart mid-download costs one round trip, not the whole blob. Everything else maps to the
error tree at once: 404 -> ``NotFound`` (3), 416/short blob -> ``FormatError`` (5), other
4xx -> ``BackendError``. When the attempts run out: ``TransientError`` (75).

Small documents (model info, the head of a sealed file) are read through
:mod:`modelseal._internal.bounded_http`: a byte cap (``FormatError``, never retried) and an
overall deadline of ``timeout`` seconds per attempt (``TransientError`` at once: a peer
trickling bytes is not retried for ``attempts × timeout``).
"""

from __future__ import annotations

import http.client
import logging
import random
import re
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import SplitResult, urljoin, urlsplit

import httpx

from modelseal._internal.bounded_http import IDENTITY, Deadline, read_body
from modelseal._internal.urls import display_url
from modelseal.errors import (
    AuthorizationError,
    BackendError,
    BlobNotFound,
    ConfigError,
    FormatError,
    NotFound,
    TransientError,
)
from modelseal.loader.metrics import ByteCounter
from modelseal.loader.tls import system_trust
from modelseal.protocol.wire import WireError, decode_json, describe

log = logging.getLogger(__name__)

#: largest JSON document (model info) accepted from a registry
MAX_JSON_BYTES = 16 << 20
_CONTENT_RANGE = re.compile(r"^bytes (\d{1,20})-(\d{1,20})/(\d{1,20}|\*)$")
_jitter = random.SystemRandom()
_T = TypeVar("_T")


class _Progress:
    """Bytes of the current range received so far (survives a failed attempt)."""

    __slots__ = ("got",)

    def __init__(self) -> None:
        self.got = 0


class _Redirected(Exception):
    """Internal: the direct path got a redirect to ``location`` (None: unusable, and httpx,
    which follows redirects, takes over)."""

    def __init__(self, location: str | None = None) -> None:
        super().__init__(location)
        self.location = location


#: Redirects one ranged read follows (registry -> presigned S3 URL is one).
_MAX_REDIRECTS = 5


class _Retry(Exception):
    """Internal: this attempt failed transiently; ``reason`` is safe to log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded exponential backoff with full jitter (AWS architecture blog style)."""

    attempts: int = 8
    base_delay: float = 0.1
    max_delay: float = 4.0

    def delay(self, attempt: int) -> float:
        """Sleep before retry number ``attempt`` (1-based)."""
        return _jitter.uniform(0.0, min(self.max_delay, self.base_delay * (2 ** (attempt - 1))))


def _status_error(url: str, response: httpx.Response, *, not_found: type[NotFound]) -> Exception:
    return _status_code_error(url, response.status_code, not_found=not_found)


def _status_code_error(url: str, status: int, *, not_found: type[NotFound]) -> Exception:
    if status == 404:
        return not_found(f"{url}: not found")
    if status in (401, 403):
        return AuthorizationError(f"{url}: access denied (HTTP {status})")
    if status == 429 or status >= 500:
        return _Retry(f"HTTP {status}")
    return BackendError(f"{url}: unexpected HTTP {status}")


def _check_range_answer(
    url: str, status: int, content_range: str | None, first: int, last: int
) -> None:
    """Accept a 206 for exactly ``first..last`` (or a 200 when ``first`` is 0); else raise.

    A short answer means the blob is shorter than its header says: FormatError, not retry.
    """
    if status == 416:
        raise FormatError(f"{url}: blob is shorter than expected (truncated?)")
    if status == 200:
        if first != 0:
            raise BackendError(f"{url}: server ignored the Range header")
        return
    if status != 206:
        raise _status_code_error(url, status, not_found=BlobNotFound)
    match = _CONTENT_RANGE.match(content_range or "")
    if match is None or int(match.group(1)) != first:
        raise BackendError(f"{url}: bad Content-Range in a 206 response")
    if int(match.group(2)) < last:
        raise FormatError(f"{url}: blob is shorter than expected (truncated?)")


def _redirect_target(url: str, location: str | None) -> str | None:
    """The absolute http(s) URL a redirect from ``url`` points to, or None if unusable
    (then httpx, with its own redirect rules, takes over). A redirect from https to plain
    http is refused outright: it would hand the download to whoever is on the path."""
    if not location or len(location) > 8192:
        return None
    target = urljoin(url, location.strip())
    try:
        parts = urlsplit(target)
        valid = parts.scheme in ("http", "https") and bool(parts.hostname)
        parts.port  # noqa: B018 (raises ValueError on a port out of range)
    except ValueError:
        return None
    if not valid:
        return None
    if url.startswith("https://") and parts.scheme == "http":
        raise BackendError(f"{display_url(url)} redirected from https to plain http; refused")
    return target


def _raise_if_untrusted(url: str, exc: BaseException) -> None:
    """A certificate that does not verify is a trust problem, never worth retrying."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError) or (
            isinstance(seen, httpx.ConnectError) and "CERTIFICATE_VERIFY_FAILED" in str(seen)
        ):
            raise ConfigError(
                f"{url}: the server's TLS certificate is not trusted "
                "(pass the CA bundle: --registry-ca / MODELSEAL_REGISTRY_CA)"
            ) from None
        seen = seen.__cause__ or seen.__context__
        if seen is exc:
            break


def _ssl_context(verify: bool | str) -> ssl.SSLContext:
    """TLS settings equal to httpx's ``verify=``: True, a CA bundle path, or False."""
    if verify is False:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    if isinstance(verify, str):
        return ssl.create_default_context(cafile=verify)
    return system_trust()


class Fetcher:
    """One pooled, thread-safe HTTP client for a load; every request goes through here."""

    def __init__(
        self,
        *,
        verify: bool | str = True,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        max_connections: int = 8,
        sleep: Callable[[float], None] = time.sleep,
        transport: httpx.BaseTransport | None = None,
        received: ByteCounter | None = None,
    ) -> None:
        self.retry = retry or RetryPolicy()
        self._sleep = sleep
        self._ssl = _ssl_context(verify)
        self._client = httpx.Client(
            verify=self._ssl,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            follow_redirects=True,
            transport=transport,
            headers=IDENTITY,
        )
        #: number of attempts that were retried (for receipts and tests)
        self.retried = 0
        #: bytes received in response bodies, retried attempts included (for metrics)
        self.received = received if received is not None else ByteCounter()
        #: bulk ranged reads go through http.client straight into the caller's buffer
        #: (``readinto``: no per-chunk bytes objects); httpx stays for everything else
        self._direct = transport is None
        self._timeout = timeout
        self._local = threading.local()
        self._conns: list[http.client.HTTPConnection] = []
        self._conns_lock = threading.Lock()
        #: where a blob URL redirected to (a registry that leaves the data path sends the
        #: loader to presigned S3 URLs): later ranges of that blob go there directly
        self._moved: dict[str, str] = {}

    def __enter__(self) -> Fetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()
        with self._conns_lock:
            for conn in self._conns:
                conn.close()
            self._conns.clear()

    # -- direct ranged reads (http.client) -------------------------------------------------

    def _connection(self, parts: SplitResult) -> tuple[http.client.HTTPConnection, bool]:
        """This thread's keep-alive connection to the URL's origin; ``True`` if reused."""
        cache: dict[tuple[str, str], http.client.HTTPConnection] | None = getattr(
            self._local, "conns", None
        )
        if cache is None:
            cache = self._local.conns = {}
        key = (parts.scheme, parts.netloc)
        conn = cache.get(key)
        if conn is not None:
            return conn, True
        host = parts.hostname or ""
        if parts.scheme == "https":
            conn = http.client.HTTPSConnection(
                host, parts.port, timeout=self._timeout, context=self._ssl
            )
        else:
            conn = http.client.HTTPConnection(host, parts.port, timeout=self._timeout)
        cache[key] = conn
        with self._conns_lock:
            self._conns.append(conn)
        return conn, False

    def _drop(self, parts: SplitResult, conn: http.client.HTTPConnection) -> None:
        conn.close()
        cache = getattr(self._local, "conns", {})
        cache.pop((parts.scheme, parts.netloc), None)
        with self._conns_lock:
            if conn in self._conns:
                self._conns.remove(conn)

    def _read_direct(self, url: str, start: int, into: memoryview, progress: _Progress) -> None:
        """Like :meth:`_read_once` but ``readinto`` the buffer over a pooled connection."""
        parts = urlsplit(url)
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        length = len(into)
        first = start + progress.got
        last = start + length - 1
        headers = {"Range": f"bytes={first}-{last}", "Accept-Encoding": "identity"}
        for _fresh_retry in range(2):
            conn, reused = self._connection(parts)
            try:
                conn.request("GET", target, headers=headers)
                response = conn.getresponse()
                break
            except (OSError, http.client.HTTPException) as exc:
                self._drop(parts, conn)
                _raise_if_untrusted(url, exc)
                if not reused:  # a stale keep-alive connection gets one free retry
                    raise _Retry(type(exc).__name__) from exc
        else:  # pragma: no cover - the loop always breaks or raises
            raise _Retry("no connection")
        reusable = False
        try:
            status = response.status
            if status in (301, 302, 303, 307, 308):
                raise _Redirected(_redirect_target(url, response.getheader("location")))
            # named without its query: a presigned redirect target carries its signature there
            _check_range_answer(
                display_url(url), status, response.getheader("content-range"), first, last
            )
            got = progress.got
            try:
                while got < length:
                    n = response.readinto(into[got:])
                    if not n:
                        break
                    got += n
                    progress.got = got
            except (OSError, http.client.HTTPException) as exc:
                raise _Retry(f"{type(exc).__name__} after {got} of {length} bytes") from exc
            reusable = response.isclosed() and not response.will_close
        finally:
            if not reusable:
                self._drop(parts, conn)

    def _backoff(self, url: str, attempt: int, reason: str) -> None:
        if attempt >= self.retry.attempts:
            raise TransientError(f"{url}: {reason} (gave up after {attempt} attempts)")
        self.retried += 1
        delay = self.retry.delay(attempt)
        log.info("retrying %s in %.2fs after: %s", url, delay, reason)
        self._sleep(delay)

    def _retrying(self, url: str, attempt: Callable[[], _T]) -> _T:
        """Run one request ``attempt`` until it returns; back off on transient failures."""
        number = 0
        while True:
            number += 1
            try:
                return attempt()
            except httpx.UnsupportedProtocol as exc:
                raise ConfigError(f"{url}: not an http(s) URL") from exc
            except _Retry as exc:
                self._backoff(url, number, exc.reason)
            except httpx.TransportError as exc:
                _raise_if_untrusted(url, exc)
                self._backoff(url, number, type(exc).__name__)

    def get_json(self, url: str, *, not_found: type[NotFound] = NotFound) -> Any:
        """GET and decode a JSON document (bounded like :meth:`get_document`)."""
        try:
            return decode_json(self.get_document(url, not_found=not_found))
        except WireError as exc:
            raise FormatError(f"{url}: response is not JSON ({describe(exc)})") from None

    def get_document(self, url: str, *, not_found: type[NotFound] = NotFound) -> bytes:
        """GET a JSON document's bytes (at most :data:`MAX_JSON_BYTES`, within ``timeout``
        seconds per attempt), retrying transient failures; the caller decodes them."""

        def attempt() -> bytes:
            deadline = Deadline(self._timeout)
            with self._client.stream(
                "GET",
                url,
                headers={"Accept": "application/json"},
                timeout=deadline.timeout(self._client.timeout),
            ) as response:
                if response.status_code != 200:
                    raise _status_error(url, response, not_found=not_found)
                body = read_body(
                    response, limit=MAX_JSON_BYTES, deadline=deadline, what=f"{url} (JSON)"
                )
                self.received.add(len(body))
                return body

        return self._retrying(url, attempt)

    @property
    def timeout(self) -> float:
        """Seconds: the overall deadline of a small answer, the longest single socket wait."""
        return self._timeout

    def read_range(
        self, url: str, start: int, into: memoryview, *, deadline: Deadline | None = None
    ) -> None:
        """Fill ``into`` with the bytes ``[start, start + len(into))`` of the blob at ``url``.

        Resumes after a connection reset with a ``Range`` from the first missing byte; an
        attempt that made progress does not count against the retry budget (but the total
        number of attempts is still bounded). With a ``deadline`` (a header, the manifest)
        the whole range, retries included, must arrive in time (``TransientError``); bulk
        downloads go without one, through ``readinto`` straight into ``into``.
        """
        length = len(into)
        progress = _Progress()
        attempt = 0
        total_attempts = 0
        direct = self._direct and deadline is None and url.startswith(("http://", "https://"))
        try:
            redirects = 0
            while progress.got < length:
                attempt += 1
                total_attempts += 1
                before = progress.got
                if deadline is not None:
                    deadline.check(url)
                try:
                    if direct:
                        target = self._moved.get(url, url)
                        try:
                            self._read_direct(target, start, into, progress)
                        except _Redirected as moved:
                            redirects += 1
                            if moved.location is None or redirects > _MAX_REDIRECTS:
                                self._read_once(url, start, into, progress)
                            else:
                                self._moved[url] = moved.location
                                attempt -= 1  # a redirect is not a failed attempt
                                total_attempts -= 1
                                continue
                        except (BackendError, NotFound, AuthorizationError) as exc:
                            if target == url:
                                raise
                            # a presigned URL that expired (403) or a store that moved:
                            # ask the registry again for a fresh one. The reason names no
                            # URL: a presigned one carries its signature in the query.
                            self._moved.pop(url, None)
                            raise _Retry(
                                f"redirected download failed ({type(exc).__name__})"
                            ) from None
                        except (_Retry, httpx.TransportError, OSError):
                            # an unreachable or failing target: the next attempt asks the
                            # registry again instead of retrying a target it may have lost
                            self._moved.pop(url, None)
                            raise
                    else:
                        self._read_once(url, start, into, progress, deadline)
                    if progress.got < length:
                        raise _Retry("connection closed before the end of the range")
                except httpx.UnsupportedProtocol as exc:
                    raise ConfigError(f"{url}: not an http(s) URL") from exc
                except httpx.TooManyRedirects:
                    raise BackendError(f"{display_url(url)}: too many redirects") from None
                except (_Retry, httpx.TransportError) as exc:
                    _raise_if_untrusted(url, exc)
                    reason = exc.reason if isinstance(exc, _Retry) else type(exc).__name__
                    if progress.got > before and total_attempts < 4 * self.retry.attempts:
                        attempt = 1  # progress: a resumed stream is not a failure streak
                    self._backoff(url, attempt, reason)
        finally:
            # a resumed range continues where it broke off: each byte arrives once
            self.received.add(progress.got)

    def _read_once(
        self,
        url: str,
        start: int,
        into: memoryview,
        progress: _Progress,
        deadline: Deadline | None = None,
    ) -> None:
        """One ranged GET from the first missing byte; ``progress.got`` advances as it reads
        (one socket read per chunk, each checked against ``deadline``)."""
        length = len(into)
        first = start + progress.got
        last = start + length - 1
        headers = {"Range": f"bytes={first}-{last}"}
        timeout = (
            self._client.timeout if deadline is None else deadline.timeout(self._client.timeout)
        )
        with self._client.stream("GET", url, headers=headers, timeout=timeout) as response:
            _check_range_answer(
                url, response.status_code, response.headers.get("content-range"), first, last
            )
            got = progress.got
            try:
                for chunk in response.iter_raw():
                    n = min(len(chunk), length - got)
                    into[got : got + n] = memoryview(chunk)[:n]
                    got += n
                    progress.got = got
                    if got == length:
                        break
                    if deadline is not None:
                        deadline.check(url)
            except httpx.TransportError as exc:
                if deadline is not None:
                    deadline.check(url)
                raise _Retry(f"{type(exc).__name__} after {got} of {length} bytes") from exc

    def read_head(self, url: str, length: int) -> tuple[bytes, int]:
        """Up to ``length`` first bytes of a blob and the blob's total length.

        One ranged GET serves both the header parse and the truncation check: the total
        comes from ``Content-Range`` (or ``Content-Length`` of a 200).
        """

        def attempt() -> tuple[bytes, int]:
            deadline = Deadline(self._timeout)
            with self._client.stream(
                "GET",
                url,
                headers={"Range": f"bytes=0-{length - 1}"},
                timeout=deadline.timeout(self._client.timeout),
            ) as response:
                status = response.status_code
                if status == 206:
                    match = _CONTENT_RANGE.match(response.headers.get("content-range", ""))
                    if match is None or match.group(1) != "0" or match.group(3) == "*":
                        raise BackendError(f"{url}: bad Content-Range in a 206 response")
                    total = int(match.group(3))
                elif status == 200:
                    try:
                        total = int(response.headers["content-length"])
                    except (KeyError, ValueError) as exc:
                        raise BackendError(f"{url}: response without a length") from exc
                elif status == 416:
                    return b"", 0
                else:
                    raise _status_error(url, response, not_found=BlobNotFound)
                body = read_body(response, limit=length, deadline=deadline, what=url, truncate=True)
                self.received.add(len(body))
                want = min(length, total)
                if len(body) < want:
                    raise _Retry("connection closed before the end of the range")
                return body[:want], total

        return self._retrying(url, attempt)

    def size(self, url: str) -> int:
        """Blob length from ``HEAD`` (retried like every request)."""

        def attempt() -> int:
            response = self._client.head(url)
            if response.status_code != 200:
                raise _status_error(url, response, not_found=BlobNotFound)
            try:
                return int(response.headers["content-length"])
            except (KeyError, ValueError) as exc:
                raise BackendError(f"{url}: HEAD without a Content-Length") from exc

        return self._retrying(url, attempt)
