"""Owner key files: one 32-byte DEK, mode 0600, never overwritten.

``modelseal keygen`` writes base64url text. Reading also accepts the two forms people make
with openssl: the raw 32 bytes (``openssl rand -out model.key 32``) and 64 hex digits
(``openssl rand -hex 32 > model.key``). The three cannot be confused: base64url text of 32
bytes is 43 characters, so a 32-byte file is never valid base64url of a key, and 64 hex
digits decode as base64url to 48 bytes, never 32.
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
from pathlib import Path

from modelseal._internal.encoding import b64url_decode, b64url_encode
from modelseal.crypto.secret import SecretBytes
from modelseal.errors import ConfigError, FormatError, NotFound

__all__ = ["DEK_LEN", "generate_key", "read_key_file", "write_key_file"]

log = logging.getLogger(__name__)

DEK_LEN = 32
_MAX_KEY_FILE = 1024


def generate_key() -> SecretBytes:
    """A fresh random 32-byte model data key (DEK)."""
    return SecretBytes(secrets.token_bytes(DEK_LEN))


def write_key_file(path: str | os.PathLike[str], key: SecretBytes) -> Path:
    """Write ``key`` as base64url text to a new file created with mode 0600.

    Refuses to overwrite an existing file: losing a model key loses the model.
    """
    target = Path(path)
    if len(key) != DEK_LEN:
        raise ConfigError(f"a model key must be {DEK_LEN} bytes")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(target, flags, 0o600)
    except FileExistsError:
        raise ConfigError(
            f"{target} already exists; refusing to overwrite a key file (choose another path)"
        ) from None
    except FileNotFoundError:
        raise ConfigError(f"{target.parent} does not exist; create the directory first") from None
    except PermissionError:
        raise ConfigError(f"cannot create {target}: permission denied") from None
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, (b64url_encode(key.reveal()) + "\n").encode("ascii"))
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        target.unlink(missing_ok=True)
        raise
    os.close(fd)
    return target


def read_key_file(path: str | os.PathLike[str]) -> SecretBytes:
    """Read a key file written by :func:`write_key_file` (base64url of 32 bytes)."""
    source = Path(path)
    try:
        # O_NONBLOCK: a FIFO passed as key file must not block the open forever
        fd = os.open(source, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise NotFound(f"key file {source} not found") from None
    except (PermissionError, IsADirectoryError):
        raise ConfigError(f"cannot read key file {source}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > _MAX_KEY_FILE:
            raise ConfigError(f"{source} is not a key file (expected a small text file)")
        if st.st_mode & 0o077:
            log.warning("key file %s is readable by other users; chmod 600 it", source)
        data = os.read(fd, _MAX_KEY_FILE + 1)
    finally:
        os.close(fd)
    buf = bytearray(data)
    try:
        if len(buf) == DEK_LEN:
            return SecretBytes(bytes(buf))
        raw = _decode_text(buf, source)
    finally:
        buf[:] = bytes(len(buf))
    if len(raw) != DEK_LEN:
        raise ConfigError(f"{source} holds {len(raw)} bytes; a model key must be {DEK_LEN} bytes")
    return SecretBytes(raw)


def _decode_text(buf: bytearray, source: Path) -> bytes:
    """64 hex digits or base64url text (surrounding white space ignored)."""
    try:
        text = buf.decode("ascii").strip()
        if len(text) == 2 * DEK_LEN and all(c in "0123456789abcdefABCDEF" for c in text):
            return bytes.fromhex(text)
        return b64url_decode(text, what="key file")
    except (UnicodeDecodeError, FormatError):
        raise ConfigError(
            f"{source} does not hold a key (base64url text, 64 hex digits or 32 raw bytes); "
            "create one with `modelseal keygen -o FILE`"
        ) from None
