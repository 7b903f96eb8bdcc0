"""The key-encryption key (KEK) that wraps every DEK the KBS stores.

The KEK file holds exactly 32 random bytes, mode 0600, generated once. It is never used
directly: HKDF derives one sub-key for wrapping DEKs, one for MACs (audit head, nonces)
and a public identifier, so the database records *which* KEK wrapped a row without
revealing anything about it.

A KEK can also live in a PKCS#11 token (an HSM); then the token does the AEAD and MAC
operations and the KEK is never exported (:mod:`modelseal.crypto.pkcs11_kek`).

Wrapped DEK layout (``WRAP_VERSION`` 1)::

    0x01 ‖ nonce (12) ‖ AES-256-GCM(wrap_key, nonce, dek, aad) (len(dek) + 16)

    aad = b"modelseal/v1 dek\\x00" ‖ kek_id ‖ b"\\x00" ‖ key_id     (both ASCII)

Binding the key id into the AAD means a row's ciphertext cannot be moved to another key
id; binding the KEK id means a row can only be unwrapped by the KEK it names.
"""

from __future__ import annotations

import contextlib
import hmac
import os
import secrets
import stat
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from hashlib import sha256
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from modelseal.crypto.secret import SecretBytes
from modelseal.errors import ConfigError, DecryptionError

__all__ = [
    "KEK_SIZE",
    "WRAP_VERSION",
    "Kek",
    "KekRing",
    "SoftwareKek",
    "create_secret_file",
    "fsync_dir",
    "read_private_file",
    "read_secret_file",
]

KEK_SIZE = 32
WRAP_VERSION = 1
_NONCE = 12
_TAG = 16
_HKDF_SALT = b"modelseal/v1 kek"


def _derive(kek: bytes, label: bytes, length: int = 32) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=_HKDF_SALT, info=label).derive(kek)


class Kek(ABC):
    """One KEK: wraps/unwraps DEKs and MACs small records, wherever its secret lives.

    The wrapped layout (module doc) is the same for every kind of KEK; a kind only supplies
    the AEAD and MAC operations. :class:`SoftwareKek` holds derived keys in memory; a KEK in
    a PKCS#11 token (:mod:`modelseal.crypto.pkcs11_kek`) never leaves the token.
    """

    __slots__ = ("id",)

    #: Public identifier recorded next to every row this KEK wraps.
    id: str

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.id!r})"

    @abstractmethod
    def _seal(self, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
        """AES-256-GCM encryption: ciphertext followed by the 16-byte tag."""

    @abstractmethod
    def _open(self, nonce: bytes, sealed: bytes, aad: bytes) -> bytes:
        """AES-256-GCM decryption; raises :class:`DecryptionError` on any mismatch."""

    @abstractmethod
    def _mac(self, message: bytes) -> bytes:
        """A MAC of ``message`` under a key that only this KEK holds."""

    def _aad(self, key_id: str) -> bytes:
        return b"modelseal/v1 dek\x00" + self.id.encode("ascii") + b"\x00" + key_id.encode("utf-8")

    def wrap(self, key_id: str, dek: SecretBytes) -> bytes:
        """Encrypt ``dek`` for storage under ``key_id`` (fresh random nonce each time)."""
        nonce = secrets.token_bytes(_NONCE)
        sealed = self._seal(nonce, dek.reveal(), self._aad(key_id))
        return bytes([WRAP_VERSION]) + nonce + sealed

    def unwrap(self, key_id: str, blob: bytes) -> SecretBytes:
        """Decrypt a stored DEK; any mismatch (key id, KEK, bytes) is one DecryptionError."""
        if len(blob) < 1 + _NONCE + _TAG or blob[0] != WRAP_VERSION:
            raise DecryptionError()
        nonce, sealed = blob[1 : 1 + _NONCE], blob[1 + _NONCE :]
        return SecretBytes(self._open(nonce, sealed, self._aad(key_id)))

    def mac(self, label: str, data: bytes) -> bytes:
        """A MAC of ``data`` under this KEK, separated by ``label``."""
        return self._mac(label.encode("ascii") + b"\x00" + data)

    def verify_mac(self, label: str, data: bytes, tag: bytes) -> bool:
        """Constant-time check of a :meth:`mac` tag."""
        return hmac.compare_digest(self.mac(label, data), tag)


class SoftwareKek(Kek):
    """A KEK whose 32 bytes are in this process (the ``kek`` file of a data directory).

    It holds only keys derived by HKDF: one for wrapping, one for HMAC-SHA256, and the id.
    """

    __slots__ = ("_aead", "_mac_key")

    def __init__(self, material: SecretBytes) -> None:
        raw = material.reveal()
        if len(raw) != KEK_SIZE:
            raise ConfigError(f"a KEK must be exactly {KEK_SIZE} bytes")
        self.id = "kek-" + _derive(raw, b"id", 8).hex()
        self._aead = AESGCM(_derive(raw, b"wrap"))
        self._mac_key = _derive(raw, b"mac")

    @classmethod
    def generate(cls) -> SoftwareKek:
        return cls(SecretBytes(secrets.token_bytes(KEK_SIZE)))

    def _seal(self, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
        return self._aead.encrypt(nonce, plaintext, aad)

    def _open(self, nonce: bytes, sealed: bytes, aad: bytes) -> bytes:
        try:
            return self._aead.decrypt(nonce, sealed, aad)
        except InvalidTag:
            raise DecryptionError() from None

    def _mac(self, message: bytes) -> bytes:
        return hmac.new(self._mac_key, message, sha256).digest()


class KekRing:
    """The active KEK plus any others still needed to unwrap rows (during a rotation).

    ``reload`` (optional) returns KEKs found on disk; it is called when a lookup misses,
    so a process picks up a KEK that another process (another worker on the same data
    directory) rotated to, instead of failing until restarted.
    """

    def __init__(
        self,
        active: Kek,
        others: Iterable[Kek] = (),
        *,
        reload: Callable[[], Iterable[Kek]] | None = None,
    ) -> None:
        self.active = active
        self._by_id = {k.id: k for k in (*others, active)}
        self._reload = reload
        self._lock = threading.Lock()

    def get(self, kek_id: str) -> Kek:
        """The KEK named ``kek_id``, reloading from disk once on a miss (see class doc)."""
        kek = self._by_id.get(kek_id)
        if kek is None and self._reload is not None:
            with self._lock:
                for found in self._reload():
                    self._by_id.setdefault(found.id, found)
            kek = self._by_id.get(kek_id)
        if kek is None:
            raise ConfigError(
                f"a stored key is wrapped under {kek_id}, which this KBS does not hold; "
                "start it with the current KEK file"
            )
        return kek

    def __iter__(self) -> Iterator[Kek]:
        return iter(list(self._by_id.values()))


def read_secret_file(path: Path, *, size: int, what: str) -> SecretBytes:
    """Read a 0600 secret file of exactly ``size`` bytes, refusing loose permissions.

    Symlinks are followed (Kubernetes mounts secrets through them); what matters is the
    mode of the file they point to.
    """
    data = read_private_file(path, limit=size, what=what)
    if len(data) != size:
        raise ConfigError(f"{what} file {path} is malformed: expected exactly {size} bytes")
    return SecretBytes(data)


def read_private_file(path: Path, *, limit: int, what: str) -> bytes:
    """At most ``limit`` bytes of a regular file that only its owner may read or write.

    As ssh does for private keys: a secret that others on the machine can read is no longer
    a secret, and starting anyway would hide that. The mode is checked on the open file
    (fstat), so the file cannot be swapped between the check and the read. A longer file
    is a ConfigError.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as exc:
        raise ConfigError(f"{what} file {path} is not readable: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{what} file {path} is not a regular file")
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise ConfigError(
                f"{what} file {path} has permissions {mode:04o}; it must be readable by its "
                f"owner only (chmod 600 {path})"
            )
        with os.fdopen(os.dup(fd), "rb") as fh:
            data = fh.read(limit + 1)
    except OSError as exc:
        raise ConfigError(f"{what} file {path} is not readable: {exc.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > limit:
        raise ConfigError(f"{what} file {path} is malformed: longer than {limit} bytes")
    return data


def create_secret_file(path: Path, *, size: int) -> bool:
    """Create ``path`` with ``size`` random bytes, mode 0600, unless it exists.

    The bytes are written to a temporary file, fsynced, then hard-linked into place, so a
    concurrent starter never reads a half-written file and exactly one value wins.
    Returns True when this call created the file.
    """
    if path.exists() or path.is_symlink():
        return False
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(secrets.token_bytes(size))
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    fsync_dir(path.parent)
    return True


def fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
