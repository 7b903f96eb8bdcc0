"""``modelseal request``: one HTTP request to an attested gateway, verified first.

The body is streamed from its file (never read whole into memory) and the response is
streamed to ``out``; the gateway is attested when the connection is made, so a refusal
(exit 4) happens before a byte of the request, let alone its body, is written.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx

from modelseal.errors import BackendError, ConfigError, NotFound, TransientError
from modelseal.policy import parse_policy_text
from modelseal.ratls.transport import AttestedTransport
from modelseal.ratls.verify import Attested

MAX_POLICY_FILE = 64 * 1024
CHUNK = 64 * 1024


@dataclass(frozen=True)
class Body:
    """A request body: inline bytes, or a file streamed in chunks (``-``: stdin)."""

    data: bytes | None = None
    path: str | None = None

    @classmethod
    def parse(cls, value: str | None) -> Body | None:
        """curl's spelling: ``@file`` (``@-`` stdin) or the literal text."""
        if value is None:
            return None
        if value.startswith("@"):
            path = value[1:]
            if path != "-" and not Path(path).is_file():
                raise ConfigError(f"--data: {path} is not a file")
            return cls(path=path)
        return cls(data=value.encode("utf-8"))

    def headers(self) -> dict[str, str]:
        if self.data is not None:
            return {"content-length": str(len(self.data))}
        if self.path not in (None, "-"):
            return {"content-length": str(Path(str(self.path)).stat().st_size)}
        return {}

    def content(self) -> bytes | Iterator[bytes]:
        if self.data is not None:
            return self.data
        return self._chunks()

    def _chunks(self) -> Iterator[bytes]:
        with _open(str(self.path)) as f:
            while chunk := f.read(CHUNK):
                yield chunk


def _open(path: str) -> IO[bytes]:
    if path == "-":
        return sys.stdin.buffer
    try:
        return open(path, "rb")
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc


@dataclass(frozen=True)
class Answer:
    """The response status and what was attested about the gateway that sent it."""

    status: int
    attested: Attested | None


def request(
    url: str,
    *,
    policy_file: str,
    out: IO[bytes],
    method: str | None = None,
    body: Body | None = None,
    headers: Sequence[tuple[str, str]] = (),
    tee_options: Mapping[str, Any] | None = None,
    fresh: bool = True,
    max_age: float | None = None,
    timeout: float = 60.0,
) -> Answer:
    """Attest the gateway at ``url`` against the policy, then send one request and stream
    the response body to ``out``. Errors: ``EvidenceError``/``PolicyDenied`` (4) when the
    gateway is refused, ``TransientError`` (75) when it cannot be reached, ``NotFound``
    (3) for a 404, ``BackendError`` (75) for another 5xx, ``ConfigError`` (2) otherwise."""
    try:
        with open(policy_file, "rb") as f:
            policy = parse_policy_text(f.read(MAX_POLICY_FILE + 1))
    except OSError as exc:
        raise ConfigError(f"cannot read the policy {policy_file}: {exc.strerror}") from exc
    transport = AttestedTransport(policy, tee_options=tee_options, fresh=fresh, max_age=max_age)
    send_headers = dict(headers)
    if body is not None:
        send_headers.update(body.headers())
    verb = method or ("POST" if body is not None else "GET")
    with httpx.Client(transport=transport, timeout=timeout) as client:
        try:
            with client.stream(
                verb,
                url,
                headers=send_headers,
                content=body.content() if body is not None else None,
            ) as response:
                stream = response.extensions.get("network_stream")
                attested = stream.get_extra_info("modelseal_attested") if stream else None
                for chunk in response.iter_raw():
                    out.write(chunk)
                    out.flush()
                status = response.status_code
        except httpx.TimeoutException as exc:
            raise TransientError(f"{url}: timed out ({type(exc).__name__})") from exc
        except httpx.TransportError as exc:
            raise TransientError(f"{url}: cannot reach the gateway: {exc}") from exc
    if status == 404:
        raise NotFound(f"{url}: HTTP 404")
    if status >= 500:
        raise BackendError(f"{url}: HTTP {status} from the gateway or its upstream")
    if status >= 400:
        raise ConfigError(f"{url}: HTTP {status}")
    return Answer(status, attested)
