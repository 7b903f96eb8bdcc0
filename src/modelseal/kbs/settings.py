"""Validated KBS configuration: everything ``modelseal kbs serve`` needs, checked at start.

Every problem is a :class:`~modelseal.errors.ConfigError` (exit 2) naming the flag, so a
misconfigured KBS never starts half-working. Plain HTTP is refused off loopback unless
``--insecure-http`` is given: the session cookie is a bearer credential.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelseal._internal.urls import is_loopback as is_loopback
from modelseal.errors import ConfigError
from modelseal.tee import registry
from modelseal.tee.plugin import KindConfig

TOKEN_SIGNING_KEY_FILE = "token-signing-key.pem"  # noqa: S105 - a file name
DEFAULT_PORT = 8080
DEFAULT_TTL = 300.0
DEFAULT_MAX_BODY = 2 * 1024 * 1024


#: Options naming a collateral download cache (defaulted into the data directory).
_CACHE_DIRS = tuple(spec for spec in registry.options() if spec.type == "dir")


@dataclass(frozen=True)
class KbsSettings:
    """KBS server settings; construct, then call :meth:`validated`."""

    data_dir: Path
    database_url: str | None = None
    #: Where KEKs live: None/"file" (the data directory) or a ``pkcs11:`` URI (a token).
    kek_uri: str | None = None
    #: A KEK store being moved away from, read until the next rotation empties it.
    kek_previous_uri: str | None = None
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    tls_cert: Path | None = None
    tls_key: Path | None = None
    insecure_http: bool = False
    #: Values of the TEE kinds' options (``registry.options()``: ``collateral``,
    #: ``snp_certs``, ``insecure_allow_sample``, ...), by option name.
    tee_options: Mapping[str, Any] = field(default_factory=dict)
    allow_cnap_oneshot: bool = False
    token_ttl: float = DEFAULT_TTL
    session_ttl: float = DEFAULT_TTL
    token_signing_key: Path | None = None
    issuer: str = "modelseal-kbs"
    audience: str = "modelseal-kbs"
    max_body_bytes: int = DEFAULT_MAX_BODY
    #: the user file of Intel Trust Authority password logins (``POST /kbs/v1/token``)
    ita_users: Path | None = None

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    @property
    def signing_key_path(self) -> Path:
        return self.token_signing_key or self.data_dir / TOKEN_SIGNING_KEY_FILE

    def tee_configs(self) -> dict[str, KindConfig]:
        """Every kind's own verifier config, built by the registry's one factory.

        Downloaded collateral is cached in the data directory unless a cache is named.
        """
        cache = {spec.name: str(self.data_dir / "collateral-cache") for spec in _CACHE_DIRS}
        return registry.build_configs({**cache, **self.tee_options})

    def insecure_kinds(self) -> tuple[str, ...]:
        """The opted-in kinds whose evidence proves nothing."""
        configs = self.tee_configs()
        return tuple(kind for kind in registry.kinds(insecure=True) if configs[kind].enabled())

    @property
    def accepts_insecure(self) -> bool:
        """True when a kind whose evidence proves nothing is opted in: every token this
        KBS issues is then stamped insecure."""
        return bool(self.insecure_kinds())

    def validated(self) -> KbsSettings:
        """Return the settings with paths normalized, or raise ConfigError."""
        if not str(self.data_dir):
            raise ConfigError("--data-dir is required")
        if self.data_dir.exists() and not self.data_dir.is_dir():
            raise ConfigError(f"--data-dir {self.data_dir} exists and is not a directory")
        if not 1 <= self.port <= 65535:
            raise ConfigError(f"--port {self.port} is not a TCP port (1-65535)")
        if not self.host:
            raise ConfigError("--host must not be empty")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("--tls-cert and --tls-key must be given together")
        for flag, path in (("--tls-cert", self.tls_cert), ("--tls-key", self.tls_key)):
            if path is not None and not path.is_file():
                raise ConfigError(f"{flag} {path} is not a readable file")
        if not self.tls and not is_loopback(self.host) and not self.insecure_http:
            raise ConfigError(
                f"refusing plain HTTP on non-loopback host {self.host!r}: give --tls-cert and "
                "--tls-key, or --insecure-http behind a TLS-terminating proxy"
            )
        for flag, ttl in (("--token-ttl", self.token_ttl), ("--session-ttl", self.session_ttl)):
            if not 1 <= ttl <= 86400:
                raise ConfigError(f"{flag} must be between 1 and 86400 seconds")
        if not 1024 <= self.max_body_bytes <= 64 * 1024 * 1024:
            raise ConfigError("--max-body-bytes must be between 1 KiB and 64 MiB")
        registry.check_options(self.tee_options)
        if self.ita_users is not None:
            from modelseal.kbs.ita_users import ItaUsers

            ItaUsers(self.ita_users).load()  # a broken user file stops the start (exit 2)
        if not self.issuer or not self.audience:
            raise ConfigError("token issuer and audience must not be empty")
        return dataclasses.replace(self, data_dir=self.data_dir.expanduser())
