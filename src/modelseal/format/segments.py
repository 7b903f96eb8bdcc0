"""Sealed format v1 key schedule and per-segment AES-256-GCM (docs/reference/format.md).

Kept apart from file I/O so that every reader (owner CLI, loader, registry checks) shares
the one place that turns (header, DEK) into a file key, checks the key commitment and
builds nonces; normative text: docs/reference/format.md.
"""

from __future__ import annotations

import hmac
from typing import Final

from modelseal.crypto.aead import AesGcm
from modelseal.crypto.kdf import hkdf_sha256
from modelseal.crypto.secret import SecretBytes
from modelseal.errors import ConfigError, DecryptionError, FormatError
from modelseal.format.header import COMMIT_LEN, TAG_LEN, Header

__all__ = ["DEK_LEN", "INFO_PREFIX", "Buffer", "FileDecryptor", "FileEncryptor", "segment_nonce"]

DEK_LEN: Final = 32
INFO_PREFIX: Final = b"modelseal/v1/file"

Buffer = bytes | bytearray | memoryview


def segment_nonce(index: int, last: bool) -> bytes:
    """``I2OSP(index, 11) ‖ (0x01 if last else 0x00)``."""
    return index.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


def _check_dek(dek: SecretBytes) -> None:
    if len(dek) != DEK_LEN:
        raise ConfigError(f"a model key (DEK) must be {DEK_LEN} bytes, got {len(dek)}")


def _file_key(header: Header, dek: SecretBytes) -> tuple[AesGcm, bytes]:
    """``K ‖ C = HKDF-SHA256(DEK, salt, "modelseal/v1/file" ‖ H, 64)``."""
    _check_dek(dek)
    okm = hkdf_sha256(dek, salt=header.salt, info=INFO_PREFIX + header.digest, length=64)
    try:
        raw = okm.reveal()
        with SecretBytes(raw[:32]) as k:
            return AesGcm(k), raw[32:]
    finally:
        okm.wipe()


def _nbytes(buf: Buffer) -> int:
    return memoryview(buf).nbytes


class FileEncryptor:
    """Encrypts the segments of one file; ``commitment`` is the 32-byte value ``C``."""

    def __init__(self, header: Header, dek: SecretBytes) -> None:
        self.header = header
        self._aead, self.commitment = _file_key(header, dek)

    @property
    def prefix(self) -> bytes:
        """Everything before segment 0: preamble ‖ header ‖ commitment."""
        return self.header.preamble + self.header.raw + self.commitment

    def encrypt_segment_into(self, index: int, plain: Buffer, out: bytearray | memoryview) -> None:
        """Encrypt segment ``index``; ``out`` gets ``len(plain) + 16`` bytes (may alias)."""
        if _nbytes(plain) != self.header.segment_plain_len(index):
            raise ValueError(f"segment {index} must hold {self.header.segment_plain_len(index)} B")
        last = index == self.header.segment_count - 1
        self._aead.encrypt_into(segment_nonce(index, last), plain, out)

    def close(self) -> None:
        self._aead.close()


class FileDecryptor:
    """Checks the key commitment, then decrypts segments of one file. Thread-safe.

    Raises :class:`DecryptionError` at construction for a wrong key or a modified header,
    before any segment is touched.
    """

    def __init__(self, header: Header, commitment: bytes, dek: SecretBytes) -> None:
        if len(commitment) != COMMIT_LEN:
            raise FormatError("key commitment must be 32 bytes")
        self.header = header
        aead, expected = _file_key(header, dek)
        if not hmac.compare_digest(expected, commitment):
            aead.close()
            raise DecryptionError()
        self._aead = aead

    def decrypt_segment_into(self, index: int, sealed: Buffer, out: bytearray | memoryview) -> None:
        """Decrypt segment ``index`` (ciphertext ‖ tag) into ``out``.

        ``out`` must be exactly the segment's plaintext length; it may alias ``sealed``
        (in-place). On failure ``out`` is zeroed and :class:`DecryptionError` raised.
        """
        expected = self.header.segment_sealed_len(index)
        if _nbytes(sealed) != expected:
            raise FormatError(f"segment {index} must be {expected} bytes")
        if _nbytes(out) != expected - TAG_LEN:
            raise ValueError(f"output buffer for segment {index} must be {expected - TAG_LEN} B")
        last = index == self.header.segment_count - 1
        self._aead.decrypt_into(segment_nonce(index, last), sealed, out)

    def decrypt_segment(self, index: int, sealed: Buffer) -> bytearray:
        out = bytearray(self.header.segment_plain_len(index))
        self.decrypt_segment_into(index, sealed, out)
        return out

    def close(self) -> None:
        self._aead.close()
