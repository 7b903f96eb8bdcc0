"""AES-256-GCM for the sealed formats: zero-copy ``*_into`` calls, wipe on failure.

cryptography's ``AESGCM.decrypt_into`` leaves the *unauthenticated* plaintext in the output
buffer when the tag does not verify (checked with cryptography 50), so every
decryption here zeroes its output before raising the one opaque :class:`DecryptionError`.
The GIL is released during AEAD calls, so one :class:`AesGcm` is shared by a thread pool;
each thread gets its own cipher context (``threading.local``) so nothing is shared mutably.
"""

from __future__ import annotations

import ctypes
import threading
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from modelseal.crypto.secret import SecretBytes
from modelseal.errors import DecryptionError

__all__ = [
    "KEY_LEN",
    "NONCE_LEN",
    "TAG_LEN",
    "AesGcm",
    "GcmStreamDecryptor",
    "GcmStreamEncryptor",
    "wipe",
]

KEY_LEN: Final = 32
NONCE_LEN: Final = 12
TAG_LEN: Final = 16

Buffer = bytes | bytearray | memoryview


def wipe(buf: bytearray | memoryview) -> None:
    """Overwrite a writable buffer (bytearray, memoryview of mmap/numpy) with zeros.

    One ``memset`` in place: no zero-filled copy the size of the buffer is allocated, and
    the GIL is released meanwhile (ctypes calls release it), so wiping segment-sized
    buffers does not stall the threads serving reads."""
    view = memoryview(buf).cast("B")
    if view.readonly:
        raise TypeError("cannot wipe a read-only buffer")
    if len(view):
        ctypes.memset((ctypes.c_char * len(view)).from_buffer(view), 0, len(view))


def _check_key(key: SecretBytes) -> None:
    if len(key) != KEY_LEN:
        raise ValueError(f"AES-256-GCM needs a {KEY_LEN}-byte key, got {len(key)} bytes")


class AesGcm:
    """AES-256-GCM with an empty AAD, usable from many threads at once.

    ``close()`` drops the cipher contexts and wipes the retained key copy.
    """

    def __init__(self, key: SecretBytes) -> None:
        _check_key(key)
        self._key = SecretBytes(key.reveal())
        self._local = threading.local()
        self._closed = False

    def _aead(self) -> AESGCM:
        aead: AESGCM | None = getattr(self._local, "aead", None)
        if aead is None:
            if self._closed:
                raise ValueError("cipher is closed")
            aead = AESGCM(self._key.reveal())
            self._local.aead = aead
        return aead

    def encrypt_into(self, nonce: bytes, data: Buffer, out: bytearray | memoryview) -> None:
        """Encrypt ``data`` into ``out`` (exactly ``len(data) + 16`` bytes: ciphertext ‖ tag)."""
        self._aead().encrypt_into(nonce, data, None, out)

    def decrypt_into(self, nonce: bytes, sealed: Buffer, out: bytearray | memoryview) -> None:
        """Decrypt ``sealed`` (ciphertext ‖ tag) into ``out`` (``len(sealed) - 16`` bytes).

        On an authentication failure ``out`` is zeroed and :class:`DecryptionError` raised.
        """
        try:
            self._aead().decrypt_into(nonce, sealed, None, out)
        except InvalidTag:
            wipe(out)
            raise DecryptionError() from None

    def encrypt(self, nonce: bytes, data: Buffer) -> bytes:
        """One-shot encryption; returns ciphertext ‖ tag."""
        return self._aead().encrypt(nonce, data, None)

    def decrypt(self, nonce: bytes, sealed: Buffer) -> bytes:
        """One-shot decryption of ciphertext ‖ tag; :class:`DecryptionError` on failure."""
        try:
            return self._aead().decrypt(nonce, sealed, None)
        except InvalidTag:
            raise DecryptionError() from None

    def close(self) -> None:
        """Wipe the key copy; later calls from threads without a context fail."""
        self._closed = True
        self._key.wipe()
        self._local = threading.local()

    def __enter__(self) -> AesGcm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class GcmStreamEncryptor:
    """Incremental AES-256-GCM encryption of one message (CNAP whole-file layout).

    Lets a multi-GiB CNAP file be written in constant memory; the tag comes from
    :meth:`finalize`.
    """

    def __init__(self, key: SecretBytes, nonce: bytes) -> None:
        _check_key(key)
        if len(nonce) != NONCE_LEN:
            raise ValueError(f"nonce must be {NONCE_LEN} bytes")
        self._ctx = Cipher(algorithms.AES(key.reveal()), modes.GCM(nonce)).encryptor()

    def update(self, data: Buffer) -> bytes:
        return self._ctx.update(data)

    def finalize(self) -> bytes:
        """Finish and return the 16-byte tag."""
        self._ctx.finalize()
        tag: bytes = self._ctx.tag
        return tag


class GcmStreamDecryptor:
    """Incremental AES-256-GCM decryption of one message whose tag is known up front.

    The plaintext returned by :meth:`update` is **unauthenticated** until :meth:`finalize`
    returns; callers must write it only to a temporary place they delete on failure.
    """

    def __init__(self, key: SecretBytes, nonce: bytes, tag: bytes) -> None:
        _check_key(key)
        if len(nonce) != NONCE_LEN or len(tag) != TAG_LEN:
            raise ValueError("bad nonce or tag length")
        self._ctx = Cipher(algorithms.AES(key.reveal()), modes.GCM(nonce, tag)).decryptor()

    def update(self, data: Buffer) -> bytes:
        return self._ctx.update(data)

    def finalize(self) -> None:
        """Check the tag; :class:`DecryptionError` if it does not verify."""
        try:
            self._ctx.finalize()
        except InvalidTag:
            raise DecryptionError() from None
