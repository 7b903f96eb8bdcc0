"""Owner-side unsealing and verification of sealed files and model directories.

A directory is checked against its authenticated manifest before any weight is
decrypted, and every plaintext's SHA-256 after. A failure in a directory names the
offending file (file names are not secret) while a :class:`DecryptionError` stays opaque
about why. Outputs go through :mod:`modelseal.owner.outputs`, so nothing unverified ever
appears at the destination.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from modelseal.crypto.secret import SecretBytes
from modelseal.errors import DecryptionError, FormatError, IntegrityError, NotFound
from modelseal.format import cnap, partial
from modelseal.format.detect import detect_fd
from modelseal.format.header import Header
from modelseal.format.manifest import (
    MAX_MANIFEST_LEN,
    SEALED_MANIFEST_NAME,
    FileEntry,
    Manifest,
)
from modelseal.format.v1 import Progress, SealedReader, read_header
from modelseal.owner.model_tree import sealed_names
from modelseal.owner.outputs import (
    atomic_dir,
    atomic_file,
    check_not_nested,
    new_file,
    open_ro,
    sha256_fd,
)
from modelseal.owner.results import CNAP_SUFFIX, UnsealResult

__all__ = ["open_manifest", "unseal", "unseal_directory", "unseal_file", "verify"]


@contextmanager
def _naming(name: str) -> Iterator[None]:
    """Prefix a failure inside a sealed directory with the sealed file's name."""
    try:
        yield
    except DecryptionError:
        raise DecryptionError(f"{name}: authentication failed") from None
    except IntegrityError:
        raise
    except FormatError as exc:
        raise IntegrityError(f"{name}: {exc}", paths=[name]) from None


def open_manifest(src: str | os.PathLike[str], dek: SecretBytes) -> Manifest:
    """Authenticate and parse ``src/modelseal-manifest.json.sealed``."""
    path = Path(src) / SEALED_MANIFEST_NAME
    if not path.is_file():
        raise IntegrityError(
            f"{SEALED_MANIFEST_NAME} is missing in {src}: not a sealed model directory, "
            "or the manifest was removed",
            paths=[SEALED_MANIFEST_NAME],
        )
    with _naming(SEALED_MANIFEST_NAME), SealedReader.open(path, dek) as reader:
        if reader.size > MAX_MANIFEST_LEN:
            raise FormatError(f"larger than {MAX_MANIFEST_LEN} bytes")
        manifest = Manifest.parse(bytes(reader.read_range(0, reader.size)))
        manifest.check_manifest_header(reader.header)
    return manifest


def _checked_headers(src: Path, manifest: Manifest) -> dict[str, Header]:
    """Names and headers of every sealed file checked against the manifest (no key used)."""
    manifest.check_names(sealed_names(src))
    headers: dict[str, Header] = {}
    for entry in manifest.files:
        name = entry.sealed_relpath
        if not (src / name).is_file():
            raise IntegrityError(f"{name}: not a regular file", paths=[name])
        fd = open_ro(src / name)
        try:
            with _naming(name):
                header, _ = read_header(fd)
            manifest.check_file(name, header, os.fstat(fd).st_size)
        finally:
            os.close(fd)
        headers[name] = header
    return headers


def _check_padding(name: str, fd: int, size: int, stored: int) -> None:
    """The bytes a hidden-names file was padded with must be zeros, as writers make them."""
    offset = size
    while offset < stored:
        chunk = os.pread(fd, min(1 << 20, stored - offset), offset)
        if not chunk or chunk.count(0) != len(chunk):
            raise IntegrityError(f"{name}: padding is not zero bytes", paths=[name])
        offset += len(chunk)


def _check_plaintext(name: str, entry: FileEntry, actual: str) -> None:
    if actual != entry.sha256:
        raise IntegrityError(f"{name}: plaintext SHA-256 differs from the manifest", paths=[name])


def unseal_directory(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    dek: SecretBytes,
    *,
    workers: int = 2,
    progress: Progress | None = None,
    overwrite: bool = False,
) -> UnsealResult:
    """Unseal a sealed model directory into the new directory ``dst``.

    The manifest is authenticated first; every file's name and header are checked against
    it before any weight is decrypted; every plaintext's SHA-256 is checked after. Files
    are mode 0600 in a 0700 directory that appears only when everything verified.
    """
    source, target = Path(src), Path(dst)
    check_not_nested(source, target)
    manifest = open_manifest(source, dek)
    _checked_headers(source, manifest)
    with atomic_dir(target, overwrite=overwrite) as tmp:
        for entry in manifest.files:
            name = entry.sealed_relpath
            with _naming(name), SealedReader.open(source / name, dek) as reader:
                out_fd = new_file(tmp / entry.path, 0o600)
                try:
                    reader.decrypt_to_fd(out_fd, workers=workers, progress=progress)
                    if reader.size != entry.size:  # hidden names: drop the zero padding
                        _check_padding(name, out_fd, entry.size, reader.size)
                        os.ftruncate(out_fd, entry.size)
                    actual = sha256_fd(out_fd, entry.size)
                finally:
                    os.close(out_fd)
            _check_plaintext(name, entry, actual)
    return UnsealResult(target, "v1", len(manifest.files), manifest.total_size, manifest.digest)


def unseal_file(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    dek: SecretBytes,
    *,
    workers: int = 2,
    progress: Progress | None = None,
    overwrite: bool = False,
) -> UnsealResult:
    """Unseal one v1 or CNAP file (detected) into ``dst`` (a file, or an existing directory
    that receives the original file name)."""
    source, target = Path(src), Path(dst)
    fd = open_ro(source)
    try:
        fmt = detect_fd(fd)
        if fmt == "v1":
            with SealedReader(fd, dek) as reader:
                if target.is_dir():
                    target = target / Path(reader.header.path).name
                with atomic_file(target, mode=0o600, overwrite=overwrite) as out_fd:
                    reader.decrypt_to_fd(out_fd, workers=workers, progress=progress)
                return UnsealResult(target, "v1", 1, reader.size)
        total = os.fstat(fd).st_size
        if fmt == "partial":
            if target.is_dir():
                target = target / source.name
            with atomic_file(target, mode=0o600, overwrite=overwrite) as out_fd:
                partial.unseal_partial(fd, out_fd, dek, progress=progress)
                size = os.fstat(out_fd).st_size
            return UnsealResult(target, "partial", 1, size)
        if target.is_dir():
            name = source.name
            name = name[: -len(CNAP_SUFFIX)] if name.endswith(CNAP_SUFFIX) else name + ".plain"
            target = target / name
        with (
            atomic_file(target, mode=0o600, overwrite=overwrite) as out_fd,
            open(fd, "rb", closefd=False) as fin,
            open(out_fd, "wb", closefd=False) as fout,
        ):
            header = cnap.decrypt_stream(fin, fout, dek, total_len=total, progress=progress)
        return UnsealResult(target, "cnap", 1, header.plaintext_len)
    finally:
        os.close(fd)


def unseal(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    dek: SecretBytes,
    *,
    workers: int = 2,
    progress: Progress | None = None,
    overwrite: bool = False,
) -> UnsealResult:
    """Unseal a sealed file or sealed model directory (format detected)."""
    source = Path(src)
    if not source.exists():
        raise NotFound(f"{source} not found")
    if source.is_dir():
        return unseal_directory(
            source, dst, dek, workers=workers, progress=progress, overwrite=overwrite
        )
    return unseal_file(source, dst, dek, workers=workers, progress=progress, overwrite=overwrite)


class _Discard:
    """A write-only sink for CNAP verification."""

    def write(self, data: bytes) -> int:
        return len(data)


def _verify_directory(source: Path, dek: SecretBytes, progress: Progress | None) -> UnsealResult:
    manifest = open_manifest(source, dek)
    _checked_headers(source, manifest)
    for entry in manifest.files:
        name = entry.sealed_relpath
        h = hashlib.sha256()
        with _naming(name), SealedReader.open(source / name, dek) as reader:
            left = entry.size
            for chunk in reader.iter_segments():  # authenticates every segment, in order
                h.update(chunk[:left])
                tail = memoryview(chunk)[left:]
                if len(tail) and bytes(tail).count(0) != len(tail):  # hidden names' padding
                    raise IntegrityError(f"{name}: padding is not zero bytes", paths=[name])
                left = max(0, left - len(chunk))
        if progress is not None:
            progress(entry.size)
        _check_plaintext(name, entry, h.hexdigest())
    return UnsealResult(source, "v1", len(manifest.files), manifest.total_size, manifest.digest)


def verify(
    src: str | os.PathLike[str],
    dek: SecretBytes,
    *,
    workers: int = 2,
    progress: Progress | None = None,
) -> UnsealResult:
    """Authenticate a sealed file or directory completely and write nothing.

    Directories: manifest, names, headers, every segment and every plaintext SHA-256
    (hashing is sequential, so ``workers`` only applies to single files).
    """
    source = Path(src)
    if not source.exists():
        raise NotFound(f"{source} not found")
    if source.is_dir():
        return _verify_directory(source, dek, progress)
    fd = open_ro(source)
    try:
        fmt = detect_fd(fd)
        if fmt == "v1":
            with SealedReader(fd, dek) as reader:
                reader.verify(workers=workers, progress=progress)
                return UnsealResult(source, "v1", 1, reader.size)
        if fmt == "partial":
            params = partial.unseal_partial(fd, None, dek, progress=progress)
            size = 8 + len(params.header) + partial.read_safetensors_header(fd).data_len
            return UnsealResult(source, "partial", 1, size)
        with open(fd, "rb", closefd=False) as fin:
            sink: Any = _Discard()
            header = cnap.decrypt_stream(
                fin, sink, dek, total_len=os.fstat(fd).st_size, progress=progress
            )
        return UnsealResult(source, "cnap", 1, header.plaintext_len)
    finally:
        os.close(fd)
