"""Registry settings and its upload credential."""

from __future__ import annotations

import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from modelseal.errors import ConfigError

__all__ = [
    "DEFAULT_MAX_BLOB_SIZE",
    "DEFAULT_PORT",
    "UPLOAD_TOKEN_FILE",
    "RegistrySettings",
    "ensure_upload_token",
]

DEFAULT_PORT: Final = 8090
UPLOAD_TOKEN_FILE: Final = "upload-token"  # noqa: S105 - a file name, not a secret
#: 1 TiB: far above any model file, still a bound on what one request may write.
DEFAULT_MAX_BLOB_SIZE: Final = 1 << 40
#: Registration bodies (JSON with one entry per file).
DEFAULT_MAX_RECORD_SIZE: Final = 8 << 20


@dataclass(frozen=True)
class RegistrySettings:
    """Everything ``create_app`` and ``serve`` need; defaults are the embedded setup."""

    data_dir: Path
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    #: ``None``: local directory ``<data_dir>/blobs``; else ``file://``, a path or ``s3://``
    blob_store_url: str | None = None
    #: seconds a presigned blob URL is valid; set, blob GETs redirect to the store (S3)
    redirect_blobs: int | None = None
    #: external base URL used in model info (``https://models.example``); ``None``: the URL
    #: each request came in on
    public_url: str | None = None
    max_blob_size: int = DEFAULT_MAX_BLOB_SIZE
    max_record_size: int = DEFAULT_MAX_RECORD_SIZE
    tls_cert: Path | None = None
    tls_key: Path | None = None

    def __post_init__(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("--tls-cert and --tls-key go together")
        if self.max_blob_size <= 0 or self.max_record_size <= 0:
            raise ConfigError("size limits must be positive")
        if self.public_url is not None and not self.public_url.startswith(("http://", "https://")):
            raise ConfigError(f"public URL must be http(s)://...: {self.public_url!r}")

    @property
    def upload_token_path(self) -> Path:
        return self.data_dir / UPLOAD_TOKEN_FILE

    @property
    def blob_root(self) -> Path:
        return self.data_dir / "blobs"


def ensure_upload_token(data_dir: Path) -> str:
    """Read ``<data_dir>/upload-token``, creating it (0600, 256 random bits) on first start.

    An existing file readable by group or others is refused: the token lets anyone
    overwrite sealed blobs (they stay undecryptable, but the model becomes unavailable).
    """
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = data_dir / UPLOAD_TOKEN_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        pass
    except OSError as exc:
        raise ConfigError(f"cannot create {path}: {exc.strerror}") from exc
    else:
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(secrets.token_urlsafe(32) + "\n")
    try:
        mode = path.stat().st_mode
        token = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the upload token file {path}") from exc
    if stat.S_IMODE(mode) & 0o077:
        raise ConfigError(f"{path} must not be readable by group or others (chmod 600)")
    if len(token) < 16:
        raise ConfigError(f"{path} holds no usable token (at least 16 characters)")
    return token
