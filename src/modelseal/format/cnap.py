"""Intel CNAP legacy layout ("12-byte header"): ``<3I`` iv_len, tag_len, data_len, IV,
ciphertext, tag — one AES-256-GCM message over the whole file, no AAD.

Used for interoperability only (CNAP model files and the ITA/CNAP ``wrapped_key``), see the
docstring of ``decrypt_data`` in Intel CNAP's ``cnap/core/keybroker.py``. ``data_len`` is
``len(ciphertext ‖ tag)`` as the CNAP sample writer and ITA KBS produce it; unlike CNAP's reader
we *check* it, together with iv_len = 12 and tag_len = 16. A uint32 ``data_len`` caps the format
at 4 GiB; larger inputs are refused. Files stream in constant memory; :func:`decrypt_stream`
returns plaintext before the tag is checked, so callers write to a temporary file and delete it
on failure.
"""

from __future__ import annotations

import secrets
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO, Final

from modelseal.crypto.aead import (
    NONCE_LEN,
    TAG_LEN,
    AesGcm,
    GcmStreamDecryptor,
    GcmStreamEncryptor,
    wipe,
)
from modelseal.crypto.secret import SecretBytes
from modelseal.errors import FormatError
from modelseal.format.fileio import read_exactly

__all__ = [
    "HEADER_LEN",
    "MAX_PLAINTEXT",
    "OVERHEAD",
    "CnapHeader",
    "decode",
    "decrypt_stream",
    "encode",
    "encrypt_stream",
    "looks_like_cnap",
    "parse_header",
]

_HEADER = struct.Struct("<3I")
HEADER_LEN: Final = 12
#: header + IV + tag
OVERHEAD: Final = HEADER_LEN + NONCE_LEN + TAG_LEN
MAX_DATA_LEN: Final = 0xFFFFFFFF
MAX_PLAINTEXT: Final = MAX_DATA_LEN - TAG_LEN
_CHUNK = 4 << 20


@dataclass(frozen=True)
class CnapHeader:
    iv_len: int
    tag_len: int
    data_len: int

    @property
    def plaintext_len(self) -> int:
        return self.data_len - self.tag_len

    @property
    def total_len(self) -> int:
        return HEADER_LEN + self.iv_len + self.data_len

    def to_json(self) -> dict[str, object]:
        return {
            "format": "cnap",
            "alg": "AES-256-GCM",
            "iv_len": self.iv_len,
            "tag_len": self.tag_len,
            "data_len": self.data_len,
            "size": self.plaintext_len,
        }


def _too_large(n: int) -> FormatError:
    return FormatError(
        f"{n} bytes exceed the CNAP format limit of {MAX_PLAINTEXT} bytes (4 GiB); "
        "use the modelseal v1 format (--format v1) for larger files"
    )


def parse_header(prefix: bytes | bytearray | memoryview, total_len: int) -> CnapHeader:
    """Validate the 12-byte header of a CNAP blob of ``total_len`` bytes."""
    if total_len > HEADER_LEN + NONCE_LEN + MAX_DATA_LEN:
        raise _too_large(total_len)
    if len(prefix) < HEADER_LEN or total_len < OVERHEAD:
        raise FormatError("too short to be a CNAP encrypted file")
    iv_len, tag_len, data_len = _HEADER.unpack_from(prefix, 0)
    if iv_len != NONCE_LEN or tag_len != TAG_LEN:
        raise FormatError(f"CNAP header: iv_len {iv_len}, tag_len {tag_len}; expected 12 and 16")
    if data_len != total_len - HEADER_LEN - NONCE_LEN:
        raise FormatError(
            f"CNAP header: data_len {data_len} does not match the file length {total_len}"
        )
    return CnapHeader(iv_len, tag_len, data_len)


def looks_like_cnap(prefix: bytes | bytearray | memoryview, total_len: int) -> bool:
    """True when ``prefix`` is a consistent CNAP header for a blob of ``total_len`` bytes."""
    try:
        parse_header(prefix, total_len)
    except FormatError:
        return False
    return True


def encode(
    key: SecretBytes, plaintext: bytes | bytearray | memoryview, *, _iv: bytes | None = None
) -> bytes:
    """Encrypt a small in-memory blob (e.g. the ITA ``wrapped_key``). ``_iv``: tests only."""
    n = memoryview(plaintext).nbytes
    if n > MAX_PLAINTEXT:
        raise _too_large(n)
    iv = secrets.token_bytes(NONCE_LEN) if _iv is None else _iv
    with AesGcm(key) as aead:
        sealed = aead.encrypt(iv, plaintext)
    return _HEADER.pack(NONCE_LEN, TAG_LEN, len(sealed)) + iv + sealed


def decode(key: SecretBytes, blob: bytes | bytearray | memoryview) -> bytes:
    """Check the header and decrypt a CNAP blob; :class:`DecryptionError` on a bad tag."""
    view = memoryview(blob).cast("B")
    header = parse_header(view, len(view))
    iv = bytes(view[HEADER_LEN : HEADER_LEN + header.iv_len])
    with AesGcm(key) as aead:
        return aead.decrypt(iv, view[HEADER_LEN + header.iv_len :])


def encrypt_stream(
    src: BinaryIO,
    dst: BinaryIO,
    key: SecretBytes,
    *,
    size: int,
    progress: Callable[[int], None] | None = None,
    _iv: bytes | None = None,
) -> CnapHeader:
    """Encrypt exactly ``size`` bytes of ``src`` into ``dst`` in constant memory."""
    if size > MAX_PLAINTEXT:
        raise _too_large(size)
    iv = secrets.token_bytes(NONCE_LEN) if _iv is None else _iv
    header = CnapHeader(NONCE_LEN, TAG_LEN, size + TAG_LEN)
    dst.write(_HEADER.pack(header.iv_len, header.tag_len, header.data_len) + iv)
    enc = GcmStreamEncryptor(key, iv)
    for chunk in read_exactly(src, size, _CHUNK):
        dst.write(enc.update(chunk))
        if progress is not None:
            progress(len(chunk))
    dst.write(enc.finalize())
    return header


def decrypt_stream(
    src: BinaryIO,
    dst: BinaryIO,
    key: SecretBytes,
    *,
    total_len: int,
    progress: Callable[[int], None] | None = None,
) -> CnapHeader:
    """Decrypt a CNAP file of ``total_len`` bytes from ``src`` (at offset 0) into ``dst``.

    ``dst`` receives plaintext before the final tag check: it must be a temporary file the
    caller deletes when this raises :class:`DecryptionError`.
    """
    prefix = src.read(HEADER_LEN + NONCE_LEN)
    header = parse_header(prefix, total_len)
    iv = prefix[HEADER_LEN : HEADER_LEN + NONCE_LEN]
    tag_at = HEADER_LEN + NONCE_LEN + header.plaintext_len
    src.seek(tag_at)
    tag = src.read(TAG_LEN)
    if len(tag) != TAG_LEN:
        raise FormatError("CNAP file ended early")
    src.seek(HEADER_LEN + NONCE_LEN)
    dec = GcmStreamDecryptor(key, iv, tag)
    buf = bytearray(min(_CHUNK, max(header.plaintext_len, 1)))
    view = memoryview(buf)
    try:
        remaining = header.plaintext_len
        while remaining:
            n = src.readinto(view[: min(len(view), remaining)])  # type: ignore[attr-defined]
            if not n:
                raise FormatError("CNAP file ended early")
            out = dec.update(view[:n])
            dst.write(out)
            remaining -= n
            if progress is not None:
                progress(n)
    finally:
        wipe(buf)
    dec.finalize()
    return header
