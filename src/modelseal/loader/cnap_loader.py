"""Loading a legacy CNAP model (one file, one AES-256-GCM message) in constant memory.

CNAP's own loader reads the whole file into memory and decrypts it at once. Here the IV
comes from the 12-byte header and the tag from the last 16 bytes (two small ranged reads),
then the ciphertext streams through a GCM decryptor chunk by chunk into the private temp
dir. The plaintext is unauthenticated until the final tag check, which is why it only ever
lands in that temp dir: the caller wipes it when ``DecryptionError`` is raised.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import PurePosixPath
from urllib.parse import unquote, urlsplit

from modelseal.crypto.aead import NONCE_LEN, TAG_LEN, GcmStreamDecryptor, wipe
from modelseal.crypto.secret import SecretBytes
from modelseal.errors import FormatError
from modelseal.format.cnap import HEADER_LEN, parse_header
from modelseal.format.header import check_relpath
from modelseal.loader.fetch import Fetcher
from modelseal.loader.receipt import LoadedFile
from modelseal.protocol.model_info import ModelInfo

CHUNK = 8 << 20
_SUFFIXES = (".enc", ".sealed")


def target_name(info: ModelInfo) -> tuple[str, str]:
    """``(plaintext relative path, blob URL)`` of a single-file CNAP model."""
    if len(info.files) > 1:
        raise FormatError("a CNAP model is a single file, but the model info lists several")
    if info.files:
        return info.files[0].path, info.files[0].url
    name = unquote(PurePosixPath(urlsplit(info.url).path).name)
    for suffix in _SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            name = name[: -len(suffix)]
            break
    return check_relpath(name, what="CNAP model file name"), info.url


def _pwrite_all(fd: int, data: memoryview | bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def load_cnap(
    fetcher: Fetcher,
    info: ModelInfo,
    dek: SecretBytes | None,
    open_target: Callable[[str, int], int],
    *,
    on_progress: Callable[[int], None] | None = None,
) -> list[LoadedFile]:
    """Download (and, when ``dek`` is given, decrypt) the single CNAP file into a target.

    ``open_target(relpath, size)`` returns a writable fd (closed here).
    """
    relpath, url = target_name(info)
    prefix, total = fetcher.read_head(url, HEADER_LEN + NONCE_LEN)
    dec: GcmStreamDecryptor | None = None
    if dek is None:
        start, end = 0, total
    else:
        header = parse_header(prefix, total)
        iv = prefix[HEADER_LEN : HEADER_LEN + NONCE_LEN]
        tag = bytearray(TAG_LEN)
        fetcher.read_range(url, total - TAG_LEN, memoryview(tag))
        dec = GcmStreamDecryptor(dek, bytes(iv), bytes(tag))
        start, end = HEADER_LEN + NONCE_LEN, HEADER_LEN + NONCE_LEN + header.plaintext_len
    buf = bytearray(min(CHUNK, max(end - start, 1)))
    view = memoryview(buf)
    fd = open_target(relpath, end - start)
    try:
        pos = start
        while pos < end:
            n = min(len(buf), end - pos)
            fetcher.read_range(url, pos, view[:n])
            out = view[:n] if dec is None else memoryview(dec.update(view[:n]))
            _pwrite_all(fd, out, pos - start)
            pos += n
            if on_progress is not None:
                on_progress(n)
        if dec is not None:
            dec.finalize()
    finally:
        os.close(fd)
        wipe(buf)
    return [LoadedFile(relpath, end - start, total)]
