"""Owner-side sealing of files and model directories, and the owner API in one import.

Sealing reads the plaintext once: each file is encrypted by a thread pool while a second
thread hashes it for the manifest. The rest of the owner API lives in small modules
(:mod:`~modelseal.owner.unsealing`, :mod:`~modelseal.owner.inspection`,
:mod:`~modelseal.owner.outputs`, :mod:`~modelseal.owner.model_tree`,
:mod:`~modelseal.owner.results`) and is re-exported here, because the CLI, ``publish``
and the loader tests import it from ``modelseal.owner.sealing``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from modelseal.crypto.secret import SecretBytes
from modelseal.errors import ConfigError, FormatError, NotFound
from modelseal.format import cnap, partial
from modelseal.format.header import check_relpath
from modelseal.format.manifest import (
    MANIFEST_NAME,
    SEALED_MANIFEST_NAME,
    SEALED_SUFFIX,
    FileEntry,
    Manifest,
    hidden_size,
    opaque_name,
    sealed_name,
)
from modelseal.format.v1 import SealOptions, SealWriter, seal_fd
from modelseal.owner.inspection import inspect, progress_total
from modelseal.owner.model_tree import model_files
from modelseal.owner.outputs import (
    atomic_dir,
    atomic_file,
    check_not_nested,
    new_file,
    open_ro,
    sha256_fd,
)
from modelseal.owner.results import (
    CNAP_SUFFIX,
    SealedFile,
    SealedModel,
    SealFormat,
    UnsealResult,
)
from modelseal.owner.unsealing import open_manifest, unseal, unseal_directory, unseal_file, verify

__all__ = [
    "CNAP_SUFFIX",
    "SealFormat",
    "SealOptions",
    "SealedFile",
    "SealedModel",
    "UnsealResult",
    "inspect",
    "open_manifest",
    "progress_total",
    "seal",
    "seal_directory",
    "seal_file",
    "unseal",
    "unseal_directory",
    "unseal_file",
    "verify",
]


def _seal_model_file(
    src: Path, rel: str, out_dir: Path, dek: SecretBytes, options: SealOptions
) -> FileEntry:
    """Seal one file of a model into ``out_dir``: as ``<rel>.sealed``, or under hidden
    names as ``<opaque>.sealed`` holding the file zero-padded to ``hidden_size``."""
    name = opaque_name() if options.hide_names else None
    fd = open_ro(src)
    try:
        before = os.fstat(fd)
        size = before.st_size
        out_fd = new_file(out_dir / sealed_name(name or rel), 0o644, dir_mode=0o755)
        try:
            with ThreadPoolExecutor(1, thread_name_prefix="modelseal-hash") as pool:
                digest = pool.submit(sha256_fd, fd, size)
                header = seal_fd(
                    fd,
                    out_fd,
                    dek,
                    options,
                    size=size,
                    path=name or rel,
                    pad_to=hidden_size(size) if name else None,
                )
                sha256 = digest.result()
        finally:
            os.close(out_fd)
        after = os.fstat(fd)
    finally:
        os.close(fd)
    if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
        raise ConfigError(f"{src} changed while it was being sealed; seal it again")
    return FileEntry(
        path=rel,
        size=size,
        sha256=sha256,
        header_sha256=header.digest_hex,
        sealed_size=header.sealed_size,
        name=name,
    )


def seal_directory(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    dek: SecretBytes,
    options: SealOptions,
    *,
    version: str | None = None,
    overwrite: bool = False,
) -> SealedModel:
    """Seal every file of the model directory ``src`` into the new directory ``dst``
    (``<path>.sealed`` each, plus ``modelseal-manifest.json.sealed``).

    ``options.model`` is the model id written into every header and the manifest. Returns
    the manifest and the model digest to register with the key.
    """
    key_id = options.require_key_id()
    source, target = Path(src), Path(dst)
    if not source.is_dir():
        raise NotFound(f"{source} is not a directory")
    check_not_nested(source, target)
    files = model_files(source)
    with atomic_dir(target, overwrite=overwrite) as tmp:
        entries = [_seal_model_file(full, rel, tmp, dek, options) for rel, full in files]
        manifest = Manifest.build(
            key_id=key_id, files=entries, model=options.model, version=version
        )
        with open(new_file(tmp / SEALED_MANIFEST_NAME, 0o644, dir_mode=0o755), "wb") as out:
            writer = SealWriter(
                out,
                dek,
                options.but(content_type="application/json"),
                size=len(manifest.raw),
                path=MANIFEST_NAME,
            )
            writer.write(manifest.raw)
            writer.close()
        os.chmod(tmp, 0o755)  # noqa: S103 - ciphertext only; readable like any published blob
    return SealedModel(directory=target, manifest=manifest, model_digest=manifest.digest)


def seal_file(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    dek: SecretBytes,
    options: SealOptions,
    *,
    fmt: SealFormat = "v1",
    path: str | None = None,
    overwrite: bool = False,
    tensors: Sequence[str] = (),
    last_layers: int = 0,
) -> SealedFile:
    """Seal one file (v1, or the CNAP legacy layout with ``fmt="cnap"``) into ``dst``.

    ``fmt="partial"`` seals only the tensors of a safetensors file selected by the glob
    ``tensors`` and/or the last ``last_layers`` numbered layers (format/partial.py).
    """
    if options.hide_names:
        raise ConfigError(
            "--hide-names applies to a model directory: the names live in its sealed "
            "manifest, and a single sealed file has none"
        )
    source, target = Path(src), Path(dst)
    fd = open_ro(source)
    try:
        size = os.fstat(fd).st_size
        if fmt == "partial":
            options.require_key_id()
            st_header = partial.read_safetensors_header(fd)
            names = partial.select_tensors(st_header, tensors, last_layers=last_layers)
            with atomic_file(target, mode=0o644, overwrite=overwrite) as out_fd:
                partial.seal_partial(fd, out_fd, dek, options, names=names)
                sealed_size = os.fstat(out_fd).st_size
            return SealedFile(target, "partial", size, sealed_size)
        if fmt == "cnap":
            if size > cnap.MAX_PLAINTEXT:
                raise ConfigError(
                    f"{source} is {size} bytes; the CNAP format holds at most "
                    f"{cnap.MAX_PLAINTEXT} bytes (4 GiB). Use --format v1"
                )
            with (
                atomic_file(target, mode=0o644, overwrite=overwrite) as out_fd,
                open(fd, "rb", closefd=False) as fin,
                open(out_fd, "wb", closefd=False) as fout,
            ):
                cnap.encrypt_stream(fin, fout, dek, size=size, progress=options.progress)
            return SealedFile(target, "cnap", size, size + cnap.OVERHEAD)
        if fmt != "v1":
            raise ConfigError(f"unknown format {fmt!r}; use v1, cnap or partial")
        options.require_key_id()
        rel = path if path is not None else source.name
        try:
            check_relpath(rel, what="--path")
        except FormatError as exc:
            raise ConfigError(str(exc)) from None
        with atomic_file(target, mode=0o644, overwrite=overwrite) as out_fd:
            header = seal_fd(fd, out_fd, dek, options, size=size, path=rel)
        return SealedFile(target, "v1", size, header.sealed_size, header)
    finally:
        os.close(fd)


def seal(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    dek: SecretBytes,
    options: SealOptions,
    *,
    fmt: SealFormat = "v1",
    version: str | None = None,
    overwrite: bool = False,
    tensors: Sequence[str] = (),
    last_layers: int = 0,
) -> SealedFile | SealedModel:
    """Seal a file or a model directory. A file sealed into an existing directory gets the
    name ``<name>.sealed`` (``<name>.enc`` for CNAP, unchanged for partial sealing)."""
    source, target = Path(src), Path(dst)
    if not source.exists():
        raise NotFound(f"{source} not found")
    if source.is_dir():
        if fmt != "v1":
            raise ConfigError(f"the {fmt} format seals single files only; use --format v1")
        return seal_directory(source, target, dek, options, version=version, overwrite=overwrite)
    if target.is_dir():
        suffix = {"cnap": CNAP_SUFFIX, "partial": ""}.get(fmt, SEALED_SUFFIX)
        target = target / (source.name + suffix)
    return seal_file(
        source,
        target,
        dek,
        options,
        fmt=fmt,
        tensors=tensors,
        last_layers=last_layers,
        overwrite=overwrite,
    )
